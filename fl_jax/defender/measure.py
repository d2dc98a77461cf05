"""What the certified defender measures on its held-out data.

Certified-FAT paper (Zizzo et al. 2021), Section 3: clean accuracy and PGD
accuracy on the validation set, and -- the new component -- certified accuracy
and mean certifiable loss (Eq. 3, over DeepZono zonotopes) on the certification
set, at a list of certification radii.
"""
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from fl_jax import metrics as metrics_lib
from fl_jax.types import Array, is_traced


class DefenderData(NamedTuple):
  """The defender's held-out sets (first N / next M training points)."""
  val_x: Array
  val_y: Array
  cert_x: Array
  cert_y: Array


def pgd_metric_name(pgd_eps) -> str:
  """``'pgd_accuracy@<eps>'``; a traced radius (one per run of a vectorized
  sweep) is named ``'pgd_accuracy@adv_eps'``, the config key it comes from."""
  return f'pgd_accuracy@{"adv_eps" if is_traced(pgd_eps) else format(pgd_eps, "g")}'


def metric_names(pgd_eps: float, cert_eps: Sequence[float], *, clean=True, pgd=True,
                 cert_acc=True, cert_loss=True):
  """``(acc_keys, loss_keys)`` of a measuring function built with these options."""
  acc, loss = [], []
  if clean:
    acc.append('clean_accuracy')
  if pgd:
    acc.append(pgd_metric_name(pgd_eps))
  for e in cert_eps:
    if cert_acc:
      acc.append(f'certified_accuracy@{e:g}')
    if cert_loss:
      loss.append(f'certifiable_loss@{e:g}')
  return acc, loss


def make_measure(apply_fn: Callable, *, pgd_eps: float = 0.25, pgd_steps: int = 20,
                 pgd_restarts: int = 1, cert_eps: Sequence[float] = (0.1,),
                 domain: str = 'zonotope', cert_chunk: int = 100, clean=True,
                 pgd=True, cert_acc=True, cert_loss=True) -> Callable:
  """Builds ``measure(params, data: DefenderData, key) -> dict`` (jittable).

  Args:
    apply_fn: the model's pure ``apply(params, x) -> logits``.
    pgd_eps, pgd_steps, pgd_restarts: the PGD check on the validation set.
    cert_eps: certification radii (MNIST in the paper: 0.1, 0.15, 0.25).
    domain: ``'zonotope'`` (DeepZono) or ``'interval'``.
    cert_chunk: certification points per vmapped chunk.
    clean, pgd, cert_acc, cert_loss: switch each check on or off.

  Returns:
    the measuring function; its keys are given by :func:`metric_names`.
  """
  from fl_jax import certification  # pylint: disable=g-import-not-at-top

  def measure(params, data: DefenderData, key):
    out = {}
    if clean:
      out['clean_accuracy'] = metrics_lib.accuracy(apply_fn, params, data.val_x, data.val_y)
    if pgd:
      out[pgd_metric_name(pgd_eps)] = metrics_lib.pgd_accuracy_at(
          apply_fn, params, data.val_x, data.val_y, key, pgd_eps, steps=pgd_steps,
          restarts=pgd_restarts)
    for e in cert_eps:
      res = certification.certify(apply_fn, params, data.cert_x, data.cert_y, e,
                                  domain=domain, chunk_size=cert_chunk)
      if cert_acc:
        out[f'certified_accuracy@{e:g}'] = jnp.mean(
            (res.certified & res.correct).astype(jnp.float32))
      if cert_loss:
        out[f'certifiable_loss@{e:g}'] = jnp.mean(res.loss)
    return out

  return measure
