"""Defensive distillation turned into an attack (certified-FAT Appendix C).

The attacker sends a defensively distilled model. Trained at softmax
temperature ``T`` and deployed at ``T = 1``, its logits are about ``T`` times
too large, the softmax saturates and, in float32, the cross-entropy gradient
that PGD follows is exactly zero: the defender's standard PGD check sees a
"robust" model. The attacker, who knows ``T``, divides the logits by ``T``
while crafting (Carlini & Wagner 2016) and gets adversarial examples that
fool the deployed model.

Recipe (Papernot et al. 2016):

1. teacher: train on the attacker's data ``(x, y)`` with
   ``CE(softmax(f(x) / T), y)``;
2. relabel: ``q = softmax(f_teacher(x) / T)``;
3. student: train on ``(x, q)`` with ``-sum_k q_k log softmax(f(x) / T)_k``;
4. send the student (used at ``T = 1``).

MNIST uses ``T = 100`` and CIFAR-10 ``T = 25``. Both networks may start from
the current global model or from a fresh initialisation (the attacker's
choice; see :func:`train_distilled`).

References:
  Zizzo et al., "Certified Federated Adversarial Training", NFFL 2021,
  Section 2.3, Section 5 and Appendix C.
  Papernot et al., "Distillation as a Defense to Adversarial Perturbations
  against Deep Neural Networks", IEEE S&P 2016.
  Carlini & Wagner, "Defensive Distillation is Not Robust to Adversarial
  Examples", arXiv:1607.04311, 2016.
"""
import functools
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

from fl_jax import metrics as metrics_lib
from fl_jax.adversarial.pgd import check_int
from fl_jax.adversarial.pgd import check_scalar
from fl_jax.adversarial.training import soft_label_loss
from fl_jax.adversarial.training import standard_loss
from fl_jax.attacks.local_training import make_local_trainer
from fl_jax.client.update import LocalSGD
from fl_jax.types import ApplyFn, Array, Params, PRNGKey


class Distilled(NamedTuple):
  """Result of :func:`train_distilled`."""
  student: Params
  teacher: Params
  teacher_loss: Array
  student_loss: Array


def soft_labels_chunked(apply_fn: ApplyFn, params: Params, x: Array, *,
                        temperature, chunk_size: int = 1000) -> Array:
  """``softmax(f(x) / T)`` for a large ``x[N, ...]`` (``lax.map`` over chunks)."""
  n = x.shape[0]
  chunk = min(chunk_size, n)
  m = -(-n // chunk)
  xp = jnp.pad(x, [(0, m * chunk - n)] + [(0, 0)] * (x.ndim - 1))
  q = lax.map(lambda xc: jax.nn.softmax(apply_fn(params, xc) / temperature, -1),
              xp.reshape((m, chunk) + x.shape[1:]))
  return q.reshape((m * chunk,) + q.shape[2:])[:n]


def make_distiller(apply_fn: ApplyFn, *, temperature: float,
                   teacher_hp: LocalSGD, student_hp: LocalSGD,
                   chunk_size: int = 1000):
  """Builds ``distill(teacher_init, student_init, x, y, mask, key) -> Distilled``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    temperature: ``T > 0`` of teacher and student (MNIST 100, CIFAR-10 25).
    teacher_hp: local SGD hyper-parameters of the teacher.
    student_hp: local SGD hyper-parameters of the student.
    chunk_size: examples per forward pass when relabelling.

  Returns:
    A pure, jit-able function; ``mask[n]`` marks the real examples.
  """
  check_scalar('temperature', temperature, positive=True)
  check_int('chunk_size', chunk_size, 1)
  teacher_train = make_local_trainer(standard_loss(apply_fn, temperature), teacher_hp)
  student_train = make_local_trainer(soft_label_loss(apply_fn, temperature), student_hp)

  def distill(teacher_init: Params, student_init: Params, x: Array, y: Array,
              mask: Array, key: PRNGKey) -> Distilled:
    k_teacher, k_student = jax.random.split(key)
    teacher, tm = teacher_train(teacher_init, x, y, mask, k_teacher, 0)
    q = soft_labels_chunked(apply_fn, teacher, x, temperature=temperature,
                            chunk_size=chunk_size)
    student, sm = student_train(student_init, x, lax.stop_gradient(q), mask,
                                k_student, 0)
    return Distilled(student, teacher, tm.train_loss, sm.train_loss)

  return distill


def train_distilled(apply_fn: ApplyFn, x, y, key: PRNGKey, *, temperature: float,
                    teacher_hp: LocalSGD, student_hp: LocalSGD,
                    teacher_init: Params, student_init: Params,
                    mask=None) -> Distilled:
  """Teacher at ``T``, soft labels at ``T``, student at ``T`` (one jitted call).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    x: ``[n, ...]`` the attacker's inputs.
    y: ``[n]`` their labels.
    key: PRNG key of the shuffles.
    temperature: ``T``.
    teacher_hp: teacher's local SGD hyper-parameters.
    student_hp: student's local SGD hyper-parameters.
    teacher_init: starting point of the teacher (the global model, or a fresh
      ``model.init(key)``).
    student_init: starting point of the student (likewise).
    mask: optional ``[n]`` bool of real examples.

  Returns:
    :class:`Distilled`; send ``student`` (deployed at ``T = 1``).
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y)
  mask = jnp.ones(x.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
  if y.shape != x.shape[:1] or mask.shape != x.shape[:1]:
    raise ValueError(f'x {x.shape}, y {y.shape}, mask {mask.shape} must share '
                     'the leading dimension')
  fn = _jitted_distiller(apply_fn, float(temperature), teacher_hp, student_hp)
  return fn(teacher_init, student_init, x, y, mask, key)


@functools.lru_cache(maxsize=8)
def _jitted_distiller(apply_fn, temperature, teacher_hp, student_hp):
  return jax.jit(make_distiller(apply_fn, temperature=temperature,
                                teacher_hp=teacher_hp, student_hp=student_hp))


def distillation_report(apply_fn: ApplyFn, params: Params, x, y, key: PRNGKey, *,
                        eps: float = 0.25, temperature: float = 100.0,
                        steps: int = 20, restarts: int = 1,
                        chunk_size: int = 500) -> dict:
  """What the defender sees and what the attacker gets.

  * ``clean``: clean accuracy;
  * ``pgd_defender``: PGD accuracy at radius ``eps`` with the attack crafted
    at ``T = 1`` (standard PGD, what the defender checks);
  * ``pgd_attacker``: PGD accuracy with the attack crafted at temperature
    ``T`` (logits divided by ``T``) and judged on the model at ``T = 1``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the (distilled) model.
    x: ``[N, ...]`` test inputs; ``y``: ``[N]`` labels.
    key: PRNG key of the random starts.
    eps: L-inf radius (MNIST 0.25).
    temperature: the attacker's crafting temperature (MNIST 100).
    steps: PGD steps.
    restarts: PGD restarts.
    chunk_size: examples per attacked batch.

  Returns:
    ``{'clean', 'pgd_defender', 'pgd_attacker'}`` as Python floats.
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y)
  clean = metrics_lib.accuracy(apply_fn, params, x, y)
  common = dict(steps=steps, restarts=restarts, chunk_size=chunk_size)
  at_1 = metrics_lib.pgd_accuracy(apply_fn, params, x, y, key, [eps],
                                  temperature=1.0, **common)[float(eps)]
  at_t = metrics_lib.pgd_accuracy(apply_fn, params, x, y, key, [eps],
                                  temperature=temperature, **common)[float(eps)]
  return {'clean': float(clean), 'pgd_defender': float(at_1),
          'pgd_attacker': float(at_t)}
