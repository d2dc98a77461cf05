"""The aggregator interface: composable stages on stacked client updates.

Every stage maps a *stack* of client updates to a stack::

    (updates[C, ...], weights[C], state) -> (updates[C', ...], weights[C'], state, diagnostics)

Pre-processing stages (norm clipping) keep ``C' = C``; reducing rules (mean,
median, Krum, ...) return ``C' = 1``; post-processing stages (DP noise) act on
that single row. One mechanism therefore covers "clip, then median, then noise"
as ``chain(clip_norm(2.), median(), gaussian_noise(1e-3, seed))``.

Updates are model *differences* ``u_i = w_i - w`` (client minus global), so
the new global model is ``w + aggregate(u)``. Weights are the clients' sample
counts ``n_i`` (any non-negative numbers; a zero weight means "absent"; a
negative concrete weight is a ValueError, while under ``jit``, where weights are
traced and cannot be checked, a negative weight also means "absent"). Leaves
must be floating-point: an integer leaf is a ValueError.

Non-finite rule (all stages): a client whose update or weight holds a NaN or
Inf is treated as absent, exactly like a client of weight zero: its weight is
set to zero and its values never reach the result (they are masked out of
order statistics and distance computations, and zeroed before any weighted
sum, so ``0 * NaN`` cannot leak into the aggregate). Every rule reports
``num_excluded``, the number of absent clients. Each rule's docstring says how
it excludes them.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fl_jax import tree_math
from fl_jax.types import Array, StackedUpdates, Updates

AggregatorState = Any
Diagnostics = dict


class Aggregator(NamedTuple):
  """A pair of pure functions, like an optax ``GradientTransformation``.

  Attributes:
    init: ``init(template) -> state`` where ``template`` is one (unstacked)
      update pytree.
    update: ``update(updates[C,...], weights[C], state) ->
      (updates[C',...], weights[C'], new_state, diagnostics)``.
  """
  init: Callable[[Updates], AggregatorState]
  update: Callable[..., tuple]


class EmptyState(NamedTuple):
  """State of a stateless stage."""


def stateless_init(template) -> EmptyState:
  """``init`` of a rule that keeps no state between rounds."""
  del template
  return EmptyState()


def sanitize(updates: StackedUpdates, weights: Array):
  """Zeros the weight and values of every non-finite client.

  Returns:
    ``(updates, weights, finite)`` with ``finite`` a ``[C]`` bool mask.
  """
  finite = tree_math.stacked_all_finite(updates) & jnp.isfinite(weights)
  weights = jnp.where(finite, weights, 0.0).astype(jnp.float32)

  def clean(x):
    mask = finite.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x, jnp.zeros_like(x))

  return jax.tree.map(clean, updates), weights, finite


def weighted_mean() -> Aggregator:
  """FedAvg: ``sum_i n_i u_i / sum_i n_i`` over the finite clients.

  McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
  Decentralized Data". With ``u_i = w_i - w`` the new model is
  ``w + sum_i n_i / n_S (w_i - w)``. If every client is absent (all weights
  zero or non-finite) the result is the zero update (the model stays).
  Accumulates in float32 and casts back to each leaf's dtype. Non-finite
  clients are skipped without copying the stack: the zeroed copy of
  :func:`sanitize` is only built (under ``lax.cond``) when some client is
  non-finite.

  Diagnostics: ``num_excluded`` (absent clients: non-finite or zero weight, as
  for every rule of this package).
  """
  from fl_jax.aggregators import _common  # pylint: disable=g-import-not-at-top

  init = stateless_init

  def update(updates, weights, state):
    _common.num_clients(updates, weights)
    weights, present, all_finite = _common.prepare(updates, weights)
    total, coef = _common.normalised(weights)
    out = _common.weighted_rows(updates, coef, present, all_finite)
    return out, total[None], state, _common.diagnostics(present)

  return Aggregator(init, update)


class ChainState(NamedTuple):
  inner: tuple


def chain(*stages: Aggregator) -> Aggregator:
  """Composes stages left to right; diagnostics of all stages are merged."""

  def init(template):
    return ChainState(tuple(s.init(template) for s in stages))

  def update(updates, weights, state):
    new_states, diag = [], {}
    for stage, s in zip(stages, state.inner):
      updates, weights, s, d = stage.update(updates, weights, s)
      new_states.append(s)
      diag.update(d)
    return updates, weights, ChainState(tuple(new_states)), diag

  return Aggregator(init, update)


def aggregate(aggregator: Aggregator, updates: StackedUpdates, weights: Array,
              state: AggregatorState):
  """Runs ``aggregator`` and returns one update.

  Returns:
    ``(update, new_state, diagnostics)``; ``update`` is unstacked.
  Raises:
    ValueError: if the aggregator does not reduce the stack to a single row.
  """
  out, _, state, diag = aggregator.update(updates, weights, state)
  lead = {x.shape[0] for x in jax.tree.leaves(out)}
  if lead != {1}:
    raise ValueError(
        f'aggregator returned a stack of {lead} rows; a chain must contain one '
        'reducing rule (mean, median, krum, ...)')
  return jax.tree.map(lambda x: x[0], out), state, diag
