"""Table-1 style evaluation of a model (certified-FAT paper, Section 5.1).

For one model: clean accuracy, PGD accuracy at the adversarial-training radius
(what a defender sees), temperature-scaled PGD accuracy (crafted at T, judged at
T = 1: what a distillation attacker gets), backdoor success, and certified
accuracy plus mean certifiable loss (Eq. 3) at each certification radius.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import certification
from fl_jax import metrics as metrics_lib
from fl_jax.types import Array, Params, PRNGKey


def evaluate_model(apply_fn, params: Params, *, test_x: Array, test_y: Array,
                   cert_x: Array, cert_y: Array, key: PRNGKey, pgd_eps: float,
                   cert_eps: Sequence[float], pgd_points: int = 1000,
                   pgd_steps: int = 20, temperature: Optional[float] = None,
                   trigger=None, backdoor_target: int = 0,
                   cert_chunk: int = 100) -> dict:
  """Returns a dict of the model's figures (floats).

  Keys: ``clean_accuracy``, ``pgd_accuracy@eps``, ``temp_pgd_accuracy@eps``
  (if ``temperature``), ``backdoor_success`` (if ``trigger``),
  ``certified_accuracy@e`` and ``certifiable_loss@e`` for every ``e`` in
  ``cert_eps``.
  """
  out = {'clean_accuracy': float(metrics_lib.accuracy(apply_fn, params, test_x, test_y))}
  n = min(pgd_points, test_x.shape[0])
  k1, k2 = jax.random.split(key)
  acc = metrics_lib.pgd_accuracy(apply_fn, params, test_x[:n], test_y[:n], k1, [pgd_eps],
                                 steps=pgd_steps)
  out[f'pgd_accuracy@{pgd_eps:g}'] = float(acc[float(pgd_eps)])
  if temperature:
    acc = metrics_lib.pgd_accuracy(apply_fn, params, test_x[:n], test_y[:n], k2, [pgd_eps],
                                   steps=pgd_steps, temperature=temperature)
    out[f'temp_pgd_accuracy@{pgd_eps:g}'] = float(acc[float(pgd_eps)])
  if trigger is not None:
    from fl_jax import attacks  # pylint: disable=g-import-not-at-top
    out['backdoor_success'] = float(attacks.backdoor_success_rate(
        apply_fn, params, test_x, test_y, trigger, backdoor_target))
  for e in cert_eps:
    res = certification.certify(apply_fn, params, cert_x, cert_y, e, chunk_size=cert_chunk)
    out[f'certified_accuracy@{e:g}'] = float(jnp.mean((res.certified & res.correct)
                                                      .astype(jnp.float32)))
    out[f'certifiable_loss@{e:g}'] = float(jnp.mean(res.loss))
  return out


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  """A markdown table of ``rows`` (dicts) restricted to ``columns``."""
  def fmt(v):
    if isinstance(v, (bool, np.bool_)):
      return 'yes' if v else 'no'
    if isinstance(v, float):
      return f'{v:.4g}'
    return str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'
