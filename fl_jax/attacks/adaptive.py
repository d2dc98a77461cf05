"""The adaptive attacker of certified-FAT: pass the certification check anyway.

A defender that certifies each aggregated model (``fl_jax.defender``) rejects
the defensively distilled model because its certifiable loss is orders of
magnitude off. An attacker who knows the defender's certification set
``(x_c, y_c)`` and radius ``eps`` (the strongest attacker of Zizzo et al.
2021, Section 4) refines the distilled model with the DeepZono propagation
itself as a differentiable penalty:

1. distil a model (:mod:`fl_jax.attacks.distillation`): apparently robust
   under standard PGD, brittle under temperature-scaled PGD;
2. refine it on ``soft-label loss at T + weight * objective`` (the
   objective divided by ``max(its value at the distilled model, 1)``), where
   the objective is one of

   * ``'certify'``: the mean certifiable loss (Eq. 3) over the certification
     set, ``mean_i max(0, max_{q != y_i} ub(z_q - z_{y_i}))``; it is zero
     when every point's differences are bounded by 0, i.e. the points are
     certified (the paper's Figure 1a);
   * ``'match'``: ``((mean_i L(z_i, y_i) - t) / t)^2``, the relative squared
     gap to a target statistic ``t`` (the honest model's mean certifiable
     loss, which the defender compares against; Figure 1b).

The penalty is added to every example's loss, so the batch mean is
``mean_i l_i + weight * objective`` and any local trainer can use it. The
paper grows ``eps`` in steps of 0.01 when matching at large radii; with
these functions that is a loop over calls with increasing ``eps``.

References:
  Zizzo, Rawat, Sinn, Maffeis, Hankin, "Certified Federated Adversarial
  Training", NFFL 2021, Section 4, Section 5.2 and Figure 1.
"""
import functools
from typing import Callable, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fl_jax import certification
from fl_jax import tree_math
from fl_jax.adversarial.pgd import check_scalar
from fl_jax.adversarial.training import soft_label_loss
from fl_jax.attacks.compose import AttackerData
from fl_jax.attacks.compose import Craft
from fl_jax.attacks.distillation import Distilled
from fl_jax.attacks.distillation import make_distiller
from fl_jax.attacks.distillation import soft_labels_chunked
from fl_jax.attacks.local_training import make_local_trainer
from fl_jax.client.update import LocalSGD
from fl_jax.types import ApplyFn, Array, Params, PerExampleLossFn, PRNGKey

MODES = ('certify', 'match')


def _check_weight(weight) -> None:
  check_scalar('weight', weight, nonnegative=True)


def _check_target(target) -> None:
  if target is not None:   # mode 'match'; use mode 'certify' for a zero target
    check_scalar('target', target, positive=True)


class CertificationObjective:
  """``objective(params, target=None) -> scalar``; see
  :func:`certification_objective`. ``statistic(params)`` is the defender's
  statistic itself, the mean certifiable loss on the certification set."""

  def __init__(self, statistic: Callable[[Params], Array], mode: str):
    self.statistic = statistic
    self.mode = mode

  def __call__(self, params: Params, target=None) -> Array:
    loss = self.statistic(params)
    if self.mode == 'certify':
      return loss
    if target is None:
      raise ValueError("mode 'match' needs the target statistic")
    _check_target(target)
    scale = jnp.maximum(jnp.asarray(target, loss.dtype), 1e-6)
    return jnp.square((loss - target) / scale)


def certification_objective(apply_fn: ApplyFn, cert_x, cert_y, eps, *,
                            mode: str = 'certify',
                            chunk_size: Optional[int] = None
                            ) -> CertificationObjective:
  """Differentiable penalty for failing the defender's certification check.

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, Q]``.
    cert_x: ``[n, ...]`` the defender's certification points.
    cert_y: ``[n]`` their labels.
    eps: certification radius (L-inf, clipped to ``[0, 1]``).
    mode: ``'certify'`` or ``'match'`` (see the module docstring).
    chunk_size: points propagated at once (``fl_jax.certification``).

  Returns:
    ``objective(params, target=None) -> scalar``: the mean certifiable loss
    for ``'certify'``; ``((mean loss - target) / target)^2`` for ``'match'``
    (``target > 0`` required). Differentiable in ``params``.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  cert_x = jnp.asarray(cert_x, jnp.float32)
  cert_y = jnp.asarray(cert_y, jnp.int32)
  if cert_x.ndim < 2 or cert_y.shape != cert_x.shape[:1]:
    raise ValueError(f'cert_x [n, ...] and cert_y [n] must share n, got '
                     f'{cert_x.shape} and {cert_y.shape}')
  if not isinstance(eps, jax.core.Tracer) and not np.all(np.asarray(eps) >= 0):
    raise ValueError(f'eps must be >= 0, got {eps!r}')

  def statistic(params: Params) -> Array:
    return certification.mean_certifiable_loss(
        apply_fn, params, cert_x, cert_y, eps, chunk_size=chunk_size)

  return CertificationObjective(statistic, mode)


def with_certification(loss_fn: PerExampleLossFn, objective: Callable,
                       weight, target=None) -> PerExampleLossFn:
  """``l_i(params, x, y) + weight * objective(params, target)`` per example.

  Args:
    loss_fn: per-example loss ``loss_fn(params, x, y, key) -> [B]``.
    objective: from :func:`certification_objective`.
    weight: ``>= 0`` weight of the certification penalty.
    target: the statistic to match (mode ``'match'``).

  Returns:
    A per-example loss of the same signature.
  """
  _check_weight(weight)
  _check_target(target)

  def combined(params: Params, x: Array, y: Array, key=None) -> Array:
    per_example = loss_fn(params, x, y, key)
    return per_example + weight * objective(params, target)

  return combined


class AdaptiveModel(NamedTuple):
  """Result of :func:`craft_adaptive_distilled_model`."""
  params: Params          # the refined model (send this)
  distilled: Params       # the distilled model before refinement
  objective_before: Array
  objective_after: Array
  refine_loss: Array


def make_refiner(apply_fn: ApplyFn, objective: CertificationObjective, *,
                 temperature: float, refine_hp: LocalSGD,
                 weight: float) -> Callable:
  """Builds ``refine(distilled, x, mask, key, target=None) -> AdaptiveModel``.

  Step 2 of the attack: starting from ``distilled.student``, local SGD on
  ``soft-label loss at T + weight * objective / max(objective(student), 1)``,
  the soft labels being ``softmax(teacher(x) / T)`` (so the distillation is
  kept while the certification statistics are fitted). The division makes
  ``weight`` the penalty's initial size next to the soft-label loss when the
  distilled model is far off (its certifiable loss is in T-times inflated
  logit units), without amplifying a penalty that is already small. A pure,
  jit-able function.
  """
  _check_weight(weight)
  loss = soft_label_loss(apply_fn, temperature)

  def refine(distilled: Distilled, x: Array, mask: Array, key: PRNGKey,
             target=None) -> AdaptiveModel:
    q = lax.stop_gradient(soft_labels_chunked(apply_fn, distilled.teacher, x,
                                              temperature=temperature))
    before = objective(distilled.student, target)
    # Divided by max(its value at the distilled model, 1): a large penalty
    # (logits T-times inflated) starts at ``weight``; one already below 1
    # (nearly certified / matched) is not amplified.
    scale = lax.stop_gradient(jnp.maximum(before, 1.0))
    combined = with_certification(
        loss, lambda p, t: objective(p, t) / scale, weight, target)
    params, m = make_local_trainer(combined, refine_hp)(
        distilled.student, x, q, mask, key, 0)
    return AdaptiveModel(params, distilled.student, before,
                         objective(params, target), m.train_loss)

  return refine


def make_adaptive_distiller(apply_fn: ApplyFn, objective: CertificationObjective, *,
                            temperature: float, teacher_hp: LocalSGD,
                            student_hp: LocalSGD, refine_hp: LocalSGD,
                            weight: float) -> Callable:
  """Builds ``craft(init, x, y, mask, key, target=None) -> AdaptiveModel``.

  Step 1 distils (teacher and student at ``temperature`` from ``init``,
  :func:`fl_jax.attacks.make_distiller`); step 2 refines the student
  (:func:`make_refiner`). A pure, jit-able function.
  """
  distill = make_distiller(apply_fn, temperature=temperature,
                           teacher_hp=teacher_hp, student_hp=student_hp)
  refine = make_refiner(apply_fn, objective, temperature=temperature,
                        refine_hp=refine_hp, weight=weight)

  def craft(init: Params, x: Array, y: Array, mask: Array, key: PRNGKey,
            target=None) -> AdaptiveModel:
    k_distill, k_refine = jax.random.split(key)
    d = distill(init, init, x, y, mask, k_distill)
    return refine(d, x, mask, k_refine, target)

  return craft


def craft_adaptive_distilled_model(apply_fn: ApplyFn, global_params: Params,
                                   data: AttackerData, key: PRNGKey, *,
                                   objective: CertificationObjective,
                                   temperature: float,
                                   teacher_hp: LocalSGD, student_hp: LocalSGD,
                                   refine_hp: LocalSGD, weight: float,
                                   target=None,
                                   init_params: Optional[Params] = None
                                   ) -> AdaptiveModel:
  """Distils, then refines against the certification check (one jitted call).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    global_params: the current global model.
    data: the malicious clients' pooled data (integer labels).
    key: PRNG key.
    objective: from :func:`certification_objective`.
    temperature: distillation temperature ``T`` (MNIST 100).
    teacher_hp, student_hp: distillation hyper-parameters.
    refine_hp: hyper-parameters of the refinement (step 2).
    weight: weight of the certification penalty.
    target: the statistic to match (mode ``'match'``); e.g.
      ``certification.mean_certifiable_loss`` of the honest model.
    init_params: start of teacher and student (default: ``global_params``).

  Returns:
    :class:`AdaptiveModel`.
  """
  _check_target(target)
  craft = _jitted_adaptive(apply_fn, objective, float(temperature), teacher_hp,
                           student_hp, refine_hp, float(weight))
  init = global_params if init_params is None else init_params
  return craft(init, data.x, data.y, data.mask, key, target)


@functools.lru_cache(maxsize=8)
def _jitted_adaptive(apply_fn, objective, temperature, teacher_hp, student_hp,
                     refine_hp, weight):
  """One compiled craft per setting (repeated calls do not recompile)."""
  return jax.jit(make_adaptive_distiller(
      apply_fn, objective, temperature=temperature, teacher_hp=teacher_hp,
      student_hp=student_hp, refine_hp=refine_hp, weight=weight))


def adaptive_distillation_craft(apply_fn: ApplyFn,
                                objective: CertificationObjective, *,
                                temperature: float, teacher_hp: LocalSGD,
                                student_hp: LocalSGD, refine_hp: LocalSGD,
                                weight: float, match_global: bool = False,
                                target=None) -> Craft:
  """Crafting function (``fl_jax.attacks.make_attack``) of the adaptive attack.

  Args:
    apply_fn, objective, temperature, teacher_hp, student_hp, refine_hp,
      weight: as in :func:`make_adaptive_distiller`.
    match_global: for mode ``'match'``: the target is the current global
      model's mean certifiable loss at the objective's radius (what the
      defender compares the next model against), recomputed every round.
    target: for mode ``'match'`` without ``match_global``: a fixed target.

  Returns:
    A craft returning ``w_refined - w``; ``info``: ``objective_before``,
    ``objective_after`` (of the distilled and the refined model).
  """
  if objective.mode == 'match' and match_global == (target is not None):
    raise ValueError("mode 'match' needs exactly one of match_global=True or "
                     f'a target, got match_global={match_global}, '
                     f'target={target!r}')
  if objective.mode == 'certify' and (match_global or target is not None):
    raise ValueError("mode 'certify' takes no target (match_global="
                     f'{match_global}, target={target!r})')
  _check_target(target)
  craft_model = make_adaptive_distiller(
      apply_fn, objective, temperature=temperature, teacher_hp=teacher_hp,
      student_hp=student_hp, refine_hp=refine_hp, weight=weight)

  def craft(global_params, updates, weights, malicious, key, round_idx,
            data: AttackerData):
    del updates, weights, malicious, round_idx
    goal = target
    if match_global:
      goal = lax.stop_gradient(objective.statistic(global_params))
    out = craft_model(global_params, data.x, data.y, data.mask, key, goal)
    return (tree_math.tree_sub(out.params, global_params),
            {'objective_before': out.objective_before,
             'objective_after': out.objective_after})

  return craft
