"""The certified-FAT stealthy attacks as crafting functions.

The attacker of Zizzo et al. (Section 2.3) wants a model with high clean
accuracy, high accuracy under the defender's standard PGD check, and a
hidden weakness inside the same L-inf budget. With the pooled data of its
malicious clients it crafts one model, which all sampled malicious clients
send once the activation rule fires (at least 3 of 5 malicious clients near
convergence, so a coordinate-wise median adopts it):

* **backdoor**: adversarial training plus an L-inf bounded stripe trigger
  relabelled to a target class (:mod:`fl_jax.attacks.trigger`);
* **distillation**: a defensively distilled model at temperature ``T``
  (:mod:`fl_jax.attacks.distillation`).

Each comes in two forms: ``craft_*_model`` (a host call returning the
malicious parameters, for launch scripts that evaluate the model before
injecting it with :func:`fl_jax.attacks.send_model_craft`) and ``*_craft``
(a crafting function for :func:`fl_jax.attacks.make_attack`, run inside the
jitted round).

References:
  Zizzo et al., "Certified Federated Adversarial Training", NFFL 2021,
  Sections 2.3 and 5, Appendices B and C.
"""
from typing import Optional

import jax

from fl_jax import tree_math
from fl_jax.attacks.compose import AttackerData
from fl_jax.attacks.compose import Craft
from fl_jax.attacks.distillation import make_distiller
from fl_jax.attacks.local_training import make_local_trainer
from fl_jax.attacks.trigger import backdoor_loss
from fl_jax.client.update import LocalSGD
from fl_jax.types import ApplyFn, Params, PRNGKey


def make_backdoor_trainer(apply_fn: ApplyFn, trigger, target: int, hp: LocalSGD,
                          *, poison_fraction: float = 0.2,
                          adv_fraction: float = 0.5, eps=0.25, steps: int = 10,
                          step_size=0.04):
  """``train(global_params, x, y, mask, key) -> (params, ClientMetrics)``.

  Local SGD from the global model with :func:`fl_jax.attacks.backdoor_loss`
  (trigger + target on a ``poison_fraction`` of each batch, PGD on an
  ``adv_fraction``, clean on the rest).
  """
  loss = backdoor_loss(apply_fn, trigger, target, poison_fraction=poison_fraction,
                       adv_fraction=adv_fraction, eps=eps, steps=steps,
                       step_size=step_size)
  trainer = make_local_trainer(loss, hp)

  def train(global_params, x, y, mask, key):
    return trainer(global_params, x, y, mask, key, 0)

  return train


def _check_warmup(warmup_epochs):
  if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
    raise ValueError(f'warmup_epochs must be an int >= 0, got {warmup_epochs!r}')


def craft_backdoored_model(apply_fn: ApplyFn, global_params: Params,
                           data: AttackerData, key: PRNGKey, *, trigger,
                           target: int, hp: LocalSGD,
                           poison_fraction: float = 0.2,
                           adv_fraction: float = 0.5, eps: float = 0.25,
                           steps: int = 10, step_size: float = 0.04,
                           warmup_epochs: int = 0):
  """The backdoored, adversarially trained model.

  Optionally ``warmup_epochs`` epochs of poisoning alone (no PGD rows) come
  first: a model that is already adversarially robust ignores an L-inf
  trigger below its training radius, so the backdoor is easier to plant
  before the joint epochs (``hp.local_epochs`` of trigger + PGD + clean).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    global_params: the current global model (the starting point).
    data: the malicious clients' pooled data.
    key: PRNG key (shuffles, PGD starts).
    trigger: ``[H, W, C]`` stripe trigger.
    target: backdoor target class.
    hp: the attacker's local SGD hyper-parameters (joint epochs).
    poison_fraction: share of each batch carrying the trigger.
    adv_fraction: share of each batch replaced by PGD examples.
    eps: PGD radius of the adversarial training.
    steps: PGD steps.
    step_size: PGD step size.
    warmup_epochs: poisoning-only epochs before the joint ones (``>= 0``).

  Returns:
    ``(params, ClientMetrics)`` (metrics of the joint phase). A one-off
    call: it compiles each time.
  """
  _check_warmup(warmup_epochs)
  params = global_params
  k_warm, k_joint = jax.random.split(key)
  metrics = None
  if warmup_epochs:
    warm = jax.jit(make_backdoor_trainer(
        apply_fn, trigger, target, hp._replace(local_epochs=warmup_epochs),
        poison_fraction=poison_fraction, adv_fraction=0.0))
    params, metrics = warm(params, data.x, data.y, data.mask, k_warm)
  train = jax.jit(make_backdoor_trainer(
      apply_fn, trigger, target, hp, poison_fraction=poison_fraction,
      adv_fraction=adv_fraction, eps=eps, steps=steps, step_size=step_size))
  params, metrics = train(params, data.x, data.y, data.mask, k_joint)
  return params, metrics


def backdoor_craft(apply_fn: ApplyFn, trigger, target: int, hp: LocalSGD, *,
                   poison_fraction: float = 0.2, adv_fraction: float = 0.5,
                   eps=0.25, steps: int = 10, step_size=0.04,
                   warmup_epochs: int = 0) -> Craft:
  """Crafting function: the backdoored model's update ``w_mal - w``.

  Same recipe as :func:`craft_backdoored_model` (``warmup_epochs`` of
  poisoning alone, then ``hp.local_epochs`` joint epochs), run inside the
  jitted round. ``attack_data`` is the attackers' pooled
  :class:`AttackerData`. ``info``: ``attacker_loss``.
  """
  _check_warmup(warmup_epochs)
  train = make_backdoor_trainer(apply_fn, trigger, target, hp,
                                poison_fraction=poison_fraction,
                                adv_fraction=adv_fraction, eps=eps,
                                steps=steps, step_size=step_size)
  warm = None
  if warmup_epochs:
    warm = make_backdoor_trainer(apply_fn, trigger, target,
                                 hp._replace(local_epochs=warmup_epochs),
                                 poison_fraction=poison_fraction, adv_fraction=0.0)

  def craft(global_params, updates, weights, malicious, key, round_idx, data):
    del updates, weights, malicious, round_idx
    k_warm, k_joint = jax.random.split(key)
    params = global_params
    if warm is not None:
      params, _ = warm(params, data.x, data.y, data.mask, k_warm)
    params, cm = train(params, data.x, data.y, data.mask, k_joint)
    return (tree_math.tree_sub(params, global_params),
            {'attacker_loss': cm.train_loss})

  return craft


def craft_distilled_model(apply_fn: ApplyFn, global_params: Params,
                          data: AttackerData, key: PRNGKey, *,
                          temperature: float, teacher_hp: LocalSGD,
                          student_hp: LocalSGD,
                          init_params: Optional[Params] = None):
  """The defensively distilled model (one jitted call).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    global_params: the current global model.
    data: the malicious clients' pooled data (integer labels).
    key: PRNG key.
    temperature: ``T`` (MNIST 100, CIFAR-10 25).
    teacher_hp: teacher's local SGD hyper-parameters.
    student_hp: student's local SGD hyper-parameters.
    init_params: starting point of teacher and student; ``None`` starts both
      from ``global_params`` (allowed by the threat model: the attacker holds
      the global model), else e.g. a fresh ``model.init(key)``.

  Returns:
    :class:`fl_jax.attacks.distillation.Distilled`.
  """
  init = global_params if init_params is None else init_params
  distill = jax.jit(make_distiller(apply_fn, temperature=temperature,
                                   teacher_hp=teacher_hp, student_hp=student_hp))
  return distill(init, init, data.x, data.y, data.mask, key)


def distillation_craft(apply_fn: ApplyFn, *, temperature: float,
                       teacher_hp: LocalSGD, student_hp: LocalSGD,
                       init_fn=None) -> Craft:
  """Crafting function: the distilled student's update ``w_student - w``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    temperature: ``T``.
    teacher_hp: teacher's hyper-parameters.
    student_hp: student's hyper-parameters.
    init_fn: ``None`` starts from the global model; else ``init_fn(key) ->
      params`` (e.g. ``model.init``) gives a fresh start each attack.

  Returns:
    A craft; ``info``: ``teacher_loss``, ``student_loss``.
  """
  distill = make_distiller(apply_fn, temperature=temperature,
                           teacher_hp=teacher_hp, student_hp=student_hp)

  def craft(global_params, updates, weights, malicious, key, round_idx, data):
    del updates, weights, malicious, round_idx
    k_init, k_train = jax.random.split(key)
    init = global_params if init_fn is None else init_fn(k_init)
    out = distill(init, init, data.x, data.y, data.mask, k_train)
    return (tree_math.tree_sub(out.student, global_params),
            {'teacher_loss': out.teacher_loss, 'student_loss': out.student_loss})

  return craft
