"""The certified defender's accept / skip rule (certified-FAT paper, Section 3).

Each round the server measures the candidate aggregate on held-out data --
clean and PGD accuracy on the validation set, certified accuracy and mean
certifiable loss on the certification set -- and compares with the last
*accepted* model:

* every accuracy ``a`` must satisfy ``a >= acc_ratio * a_ref - acc_atol``
  (paper: ``acc_ratio = 0.9``, ``acc_atol = 0``; a small ``acc_atol`` keeps a
  reference near 0, e.g. certified accuracy at a radius nothing certifies,
  from rejecting a drop of one point);
* every certifiable loss ``L`` must stay in the band
  ``L_ref - (loss_down_tol * |L_ref| + loss_atol) <= L <= L_ref + loss_tol * |L_ref| + loss_atol``
  (paper: "varied by at most 10%", i.e. ``loss_tol = loss_down_tol = 0.1``;
  ``loss_atol`` keeps a reference of exactly 0 from rejecting every change;
  ``loss_down_tol = inf`` makes the check one-sided, rejecting only models
  that got less certifiable).

If all enabled checks pass, the candidate becomes the global model and the
reference; otherwise the round is skipped and the global model stays. The rule
is a pure function of metric dicts, so it runs inside the jitted round.
"""
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from fl_jax.types import Array, Params, is_traced


class DefenderState(NamedTuple):
  """Metrics of the last accepted model (dict of float32 scalars)."""
  reference: dict


class Defender(NamedTuple):
  """A defender as pure functions.

  Attributes:
    measure: ``measure(params, defender_data, key) -> dict`` of scalar metrics.
    init: ``init(params, defender_data, key) -> DefenderState`` (measures the
      current global model as the first reference).
    check: ``check(candidate, state, defender_data, key) -> (accept, state,
      info)``; ``info`` holds the candidate's metrics and each check's verdict
      (``ok/<metric>``).
  """
  measure: Callable
  init: Callable
  check: Callable


def decide(metrics: Mapping[str, Array], reference: Mapping[str, Array], *,
           acc_keys: Sequence[str], loss_keys: Sequence[str], acc_ratio: float,
           loss_tol: float, loss_atol: float, acc_atol: float = 0.0,
           loss_down_tol: Optional[float] = None):
  """Applies the rule; returns ``(accept, verdicts)`` (all jnp bools).

  ``loss_down_tol=None`` means ``loss_tol`` (the symmetric rule of the paper).
  """
  down = loss_tol if loss_down_tol is None else loss_down_tol
  verdicts = {}
  for k in acc_keys:
    verdicts[k] = metrics[k] >= acc_ratio * reference[k] - acc_atol
  def band(tol, ref):
    # tol * |ref| + atol; an infinite tolerance leaves that side unchecked
    # (also around a zero reference, where inf * 0 would be NaN).
    if is_traced(tol):
      finite = jnp.isfinite(tol)
      return jnp.where(finite, jnp.where(finite, tol, 0.0) * ref + loss_atol, jnp.inf)
    if tol == float('inf'):
      return jnp.inf
    return tol * ref + loss_atol

  for k in loss_keys:
    delta = metrics[k] - reference[k]
    ref = jnp.abs(reference[k])
    verdicts[k] = jnp.logical_and(delta <= band(loss_tol, ref), -delta <= band(down, ref))
  ok = [jnp.isfinite(metrics[k]) for k in (*acc_keys, *loss_keys)]
  accept = jnp.all(jnp.stack([*verdicts.values(), *ok])) if (verdicts or ok) else jnp.array(True)
  return accept, verdicts


def make_defender(measure: Callable, *, acc_keys: Sequence[str],
                  loss_keys: Sequence[str], acc_ratio: float = 0.9,
                  loss_tol: float = 0.1, loss_atol: float = 1e-3,
                  acc_atol: float = 0.0,
                  loss_down_tol: Optional[float] = None) -> Defender:
  """Builds a defender around a measuring function.

  Args:
    measure: ``measure(params, defender_data, key) -> dict`` of scalars.
    acc_keys: metric names checked as accuracies (higher is better).
    loss_keys: metric names checked as certifiable losses (must stay close).
    acc_ratio: an accuracy must be at least this fraction of the reference.
    loss_tol: allowed relative increase of a loss (and decrease, unless
      ``loss_down_tol`` is given).
    loss_atol: allowed absolute change of a loss on top of the relative one.
    acc_atol: allowed absolute drop of an accuracy below
      ``acc_ratio * reference``.
    loss_down_tol: allowed relative decrease of a loss (``None``: same as
      ``loss_tol``; ``inf``: any decrease is accepted).

  A candidate with any non-finite metric is always rejected.
  """
  # Traced tolerances (per-run settings of a vectorized sweep) pass unchecked.
  if not is_traced(acc_ratio) and not 0 <= acc_ratio <= 1:
    raise ValueError(f'acc_ratio must be in [0, 1], got {acc_ratio!r}')
  for name, v in (('loss_tol', loss_tol), ('loss_atol', loss_atol), ('acc_atol', acc_atol),
                  ('loss_down_tol', 0.0 if loss_down_tol is None else loss_down_tol)):
    if not is_traced(v) and not v >= 0:   # also rejects NaN
      raise ValueError(f'{name} must be >= 0, got {v!r}')
  if not acc_keys and not loss_keys:
    raise ValueError('the defender needs at least one check (acc_keys or loss_keys)')

  def init(params: Params, data, key) -> DefenderState:
    m = measure(params, data, key)
    # Copies: the reference must not alias the (donated) parameters.
    return DefenderState({k: jnp.array(m[k], jnp.float32) for k in (*acc_keys, *loss_keys)})

  def check(candidate: Params, state: DefenderState, data, key):
    m = measure(candidate, data, key)
    m = {k: jnp.asarray(v, jnp.float32) for k, v in m.items()}
    accept, verdicts = decide(m, state.reference, acc_keys=acc_keys, loss_keys=loss_keys,
                              acc_ratio=acc_ratio, loss_tol=loss_tol, loss_atol=loss_atol,
                              acc_atol=acc_atol, loss_down_tol=loss_down_tol)
    ref = jax.tree.map(lambda new, old: jnp.where(accept, new, old),
                       {k: m[k] for k in state.reference}, state.reference)
    info = {**m, **{f'ok/{k}': v for k, v in verdicts.items()}, 'accept': accept}
    return accept, DefenderState(ref), info

  return Defender(measure, init, check)
