"""Per-example client losses: plain, soft-label (distillation), adversarial.

Every factory returns ``loss_fn(params, x[B, ...], y, key) -> loss[B]``, the
:data:`fl_jax.types.PerExampleLossFn` contract of the client update, which
masks padded examples itself and averages. ``key`` is ignored by the
deterministic losses.

Adversarial training (Madry et al. 2018) replaces the first
``m = round(fraction * B)`` examples of each (already shuffled) batch by PGD
examples crafted on the fly against the current parameters and minimises

.. math::
    \\frac{1}{B}\\Big(\\sum_{i < m} \\mathrm{CE}(f_w(x_i^{adv}), y_i)
    + \\sum_{i \\ge m} \\mathrm{CE}(f_w(x_i), y_i)\\Big),

with ``x^adv`` treated as a constant (no gradient through the attack). The
certified federated adversarial training paper uses eps 0.25 on MNIST and
8/255 on CIFAR-10.

References:
  Madry et al., "Towards Deep Learning Models Resistant to Adversarial
  Attacks", ICLR 2018.
  Papernot et al., "Distillation as a Defense to Adversarial Perturbations
  against Deep Neural Networks", IEEE S&P 2016 (soft labels at temperature T).
"""
import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from fl_jax.adversarial.pgd import check_attack_args
from fl_jax.adversarial.pgd import check_scalar
from fl_jax.adversarial.pgd import cross_entropy
from fl_jax.adversarial.pgd import pgd
from fl_jax.types import ApplyFn, Array, Params, PerExampleLossFn


def standard_loss(apply_fn: ApplyFn, temperature=1.0) -> PerExampleLossFn:
  """Cross-entropy on ``logits / T``.

  .. math:: \\ell_i = -\\log \\mathrm{softmax}(f_w(x_i) / T)_{y_i}

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    temperature: ``T > 0`` (``T > 1`` trains a distillation teacher/student).

  Returns:
    ``loss_fn(params, x[B, ...], y[B], key) -> [B]`` (``key`` unused).
  """
  check_scalar('temperature', temperature, positive=True)

  def loss_fn(params: Params, x: Array, y: Array, key=None) -> Array:
    del key
    return cross_entropy(apply_fn(params, x), y, temperature)

  return loss_fn


def soft_labels(apply_fn: ApplyFn, params: Params, x: Array, *,
                temperature=1.0) -> Array:
  """Teacher probabilities ``softmax(f_w(x) / T)``: ``[B, ...] -> [B, K]``."""
  check_scalar('temperature', temperature, positive=True)
  return jax.nn.softmax(apply_fn(params, x) / temperature, axis=-1)


def soft_label_loss(apply_fn: ApplyFn, temperature=1.0) -> PerExampleLossFn:
  """Cross-entropy against soft labels at temperature ``T``.

  .. math:: \\ell_i = -\\sum_k q_{ik} \\log \\mathrm{softmax}(f_w(x_i) / T)_k

  as used to train the student of defensive distillation (Papernot et al.
  2016). No ``T^2`` factor is applied.

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    temperature: ``T > 0``.

  Returns:
    ``loss_fn(params, x[B, ...], q[B, K], key) -> [B]`` where each row of
    ``q`` is a probability vector (e.g. from :func:`soft_labels`).
  """
  check_scalar('temperature', temperature, positive=True)

  def loss_fn(params: Params, x: Array, q: Array, key=None) -> Array:
    del key
    logits = apply_fn(params, x)
    if q.shape != logits.shape:
      raise ValueError(f'soft labels must be shaped like the logits '
                       f'{logits.shape}, got {q.shape}')
    return optax.softmax_cross_entropy(logits / temperature, q)

  return loss_fn


def num_adversarial(batch_size: int, fraction: float) -> int:
  """``round(fraction * B)`` with halves rounded up (a static count)."""
  return int(math.floor(fraction * batch_size + 0.5))


def adversarial_loss(apply_fn: ApplyFn, *, eps, steps: int, step_size,
                     fraction: float = 1.0, random_start: bool = True,
                     lo=0.0, hi=1.0) -> PerExampleLossFn:
  """Adversarial-training loss: PGD examples crafted against current params.

  The first ``m = round(fraction * B)`` examples (halves rounded up) of the
  batch are replaced by :func:`fl_jax.adversarial.pgd` examples (untargeted,
  ``T = 1``) crafted against ``params`` with the gradient stopped through the
  attack; the per-example cross-entropy is taken on the mixed batch. With
  ``fraction = 0`` this is :func:`standard_loss`.

  Args:
    apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, K]``.
    eps: L-inf radius ``>= 0`` (MNIST 0.25, CIFAR-10 8/255 in the paper).
    steps: PGD steps ``>= 1``.
    step_size: PGD step size ``> 0``.
    fraction: share of each batch replaced, in ``[0, 1]``.
    random_start: PGD random start.
    lo: lower end of the valid input range.
    hi: upper end of the valid input range.

  Returns:
    ``loss_fn(params, x[B, ...], y[B], key) -> [B]``; ``key`` seeds the
    random start.

  Raises:
    ValueError: for bad PGD hyper-parameters or ``fraction`` outside [0, 1].
  """
  check_attack_args(eps=eps, steps=steps, step_size=step_size,
                            temperature=1.0, lo=lo, hi=hi)
  check_scalar('fraction', fraction, nonnegative=True)
  if not float(np.asarray(fraction)) <= 1.0:
    raise ValueError(f'fraction must be in [0, 1], got {fraction!r}')
  fraction = float(np.asarray(fraction))

  def loss_fn(params: Params, x: Array, y: Array, key) -> Array:
    m = num_adversarial(x.shape[0], fraction)
    if m > 0:
      frozen = lax.stop_gradient(params)
      x_adv = pgd(apply_fn, frozen, x[:m], y[:m], key, eps=eps,
                          steps=steps, step_size=step_size,
                          random_start=random_start, lo=lo, hi=hi)
      x = jnp.concatenate([lax.stop_gradient(x_adv), x[m:]], axis=0)
    return cross_entropy(apply_fn(params, x), y)

  return loss_fn
