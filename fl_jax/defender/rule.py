"""The certified defender's accept / skip rule (certified-FAT paper, Section 3).

Each round the server measures the candidate aggregate on held-out data --
clean and PGD accuracy on the validation set, certified accuracy and mean
certifiable loss on the certification set -- and compares with the last
*accepted* model:

* every accuracy ``a`` must satisfy ``a >= acc_ratio * a_ref`` (paper: 0.9);
* every certifiable loss ``L`` must satisfy
  ``|L - L_ref| <= loss_tol * L_ref + loss_atol`` (paper: ``loss_tol = 0.1``;
  ``loss_atol`` keeps a reference of exactly 0 from rejecting every change).

If all enabled checks pass, the candidate becomes the global model and the
reference; otherwise the round is skipped and the global model stays. The rule
is a pure function of metric dicts, so it runs inside the jitted round.
"""
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from fl_jax.types import Array, Params


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
           loss_tol: float, loss_atol: float):
  """Applies the rule; returns ``(accept, verdicts)`` (all jnp bools)."""
  verdicts = {}
  for k in acc_keys:
    verdicts[k] = metrics[k] >= acc_ratio * reference[k]
  for k in loss_keys:
    verdicts[k] = jnp.abs(metrics[k] - reference[k]) <= loss_tol * reference[k] + loss_atol
  ok = [jnp.isfinite(metrics[k]) for k in (*acc_keys, *loss_keys)]
  accept = jnp.all(jnp.stack([*verdicts.values(), *ok])) if (verdicts or ok) else jnp.array(True)
  return accept, verdicts


def make_defender(measure: Callable, *, acc_keys: Sequence[str],
                  loss_keys: Sequence[str], acc_ratio: float = 0.9,
                  loss_tol: float = 0.1, loss_atol: float = 1e-3) -> Defender:
  """Builds a defender around a measuring function.

  Args:
    measure: ``measure(params, defender_data, key) -> dict`` of scalars.
    acc_keys: metric names checked as accuracies (higher is better).
    loss_keys: metric names checked as certifiable losses (must stay close).
    acc_ratio: an accuracy must be at least this fraction of the reference.
    loss_tol: allowed relative change of a loss.
    loss_atol: allowed absolute change of a loss on top of the relative one.

  A candidate with any non-finite metric is always rejected.
  """
  if not 0 <= acc_ratio <= 1:
    raise ValueError(f'acc_ratio must be in [0, 1], got {acc_ratio!r}')
  if loss_tol < 0 or loss_atol < 0:
    raise ValueError(f'loss_tol and loss_atol must be >= 0, got {loss_tol!r}, {loss_atol!r}')
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
                              acc_ratio=acc_ratio, loss_tol=loss_tol, loss_atol=loss_atol)
    ref = jax.tree.map(lambda new, old: jnp.where(accept, new, old),
                       {k: m[k] for k in state.reference}, state.reference)
    info = {**m, **{f'ok/{k}': v for k, v in verdicts.items()}, 'accept': accept}
    return accept, DefenderState(ref), info

  return Defender(measure, init, check)
