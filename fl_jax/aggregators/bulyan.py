"""Bulyan: iterated Krum selection, then a coordinate-wise trimmed average."""
import jax
import jax.numpy as jnp
from jax import lax

from fl_jax.aggregators import _common
from fl_jax.aggregators import _order_stats
from fl_jax.aggregators.base import Aggregator, stateless_init
from fl_jax.aggregators.krum import distance_matrix, SortedDistances
from fl_jax.aggregators.median import median_block


def closest_to_median_block(blk, selected, theta, beta):
  """Mean of the ``beta`` values closest to the median, per column.

  Args:
    blk: float32 ``[C, B]`` (rows outside ``selected`` may be non-finite).
    selected: ``[C]`` bool, ``theta`` of them true.
    theta, beta: int scalars, ``1 <= beta <= theta``.
  Returns:
    float32 ``[B]``: with ``med`` the median of the selected values and
    ``d* `` the ``beta``-th smallest distance ``|x - med|``, the mean of the
    values strictly closer than ``d*`` plus ``beta - #closer`` copies of the
    mean of the values at distance exactly ``d*`` (ties at the boundary, which
    may be ``med - d*`` and ``med + d*``, contribute their average, so the
    result does not depend on client order).
  """
  sel = selected[:, None]
  med = median_block(jnp.where(sel, blk, jnp.inf), theta)
  dist = _order_stats.to_keys(jnp.where(sel, jnp.abs(blk - med[None]), jnp.inf))
  dstar = _order_stats.kth_key(dist, beta - 1)
  closer = dist < dstar[None]
  tie = dist == dstar[None]
  n_closer = jnp.sum(jnp.where(closer, 1.0, 0.0), axis=0)
  n_tie = jnp.sum(jnp.where(tie, 1.0, 0.0), axis=0)
  s_closer = jnp.sum(jnp.where(closer, blk, 0.0), axis=0)
  s_tie = jnp.sum(jnp.where(tie & sel, blk, 0.0), axis=0)
  bf = jnp.asarray(beta, jnp.float32)
  return (s_closer + (bf - n_closer) * s_tie / jnp.maximum(n_tie, 1.0)) / bf


def bulyan(num_byzantine: int) -> Aggregator:
  """Bulyan: iterated Krum selection, then per coordinate the mean closest to the median.

  El Mhamdi, Guerraoui and Rouault 2018, "The Hidden Vulnerability of
  Distributed Learning in Byzantium", ICML. With ``n`` present clients and
  ``f`` assumed Byzantine ones:

  1. *Selection.* Start from all present clients; ``theta = n - 2f`` times,
     run Krum on the remaining set ``R`` (score = sum of squared distances to
     the ``|R| - f - 2`` closest other members of ``R``, clipped to >= 1),
     move its choice from ``R`` to the selection ``S``. Ties in score (which
     are certain once ``k = 1``: mutual nearest neighbours) are broken by
     the sum of squared distances to all of ``R``, then by index.
  2. *Aggregation.* For every coordinate ``j``, with ``med_j`` the median of
     ``{u_i[j] : i in S}`` (mean of the two middle values for even ``theta``),
     average the ``beta = theta - 2f`` values of ``S`` closest to ``med_j``:

       ``Bulyan(u)[j] = 1/beta sum_{i in B_j} u_i[j]``,
       ``B_j = argmin_{|B| = beta, B in S} sum_{i in B} |u_i[j] - med_j|``.

  The distance matrix is computed once (one Gram matmul per leaf, see
  :func:`fl_jax.aggregators.krum.pairwise_sq_distances`) and each row sorted
  once; the ``theta`` Krum rounds are a ``lax.fori_loop`` over ``C - 2f``
  static steps (inactive past ``theta``) costing ``O(C^2)`` each. The
  coordinate stage is exact (bisection on the float keys, blockwise).
  Unweighted: data sizes only decide presence.

  Non-finite or zero-weight clients, and finite ones too large for float32
  distances (treated as non-finite, see
  :func:`fl_jax.aggregators.krum.pairwise_sq_distances`), are never members of
  ``R`` or ``S``; ``n`` is traced. If exclusions leave ``n < 4f + 3`` the sizes are clipped
  (``theta = max(n - 2f, 1)``, ``beta = max(theta - 2f, 1)``) and the
  Byzantine guarantee no longer holds. With ``n = 0`` the result is the zero
  update.

  Args:
    num_byzantine: ``f >= 0``; the stack must have ``C >= 4f + 3`` clients
      (checked at trace time, ValueError).

  Returns:
    An :class:`Aggregator`; ``update(updates[C, ...], weights[C], state)``
    returns ``(aggregate[1, ...], selected_weight[1], state, diagnostics)``
    with ``diagnostics = {'selected': [C] bool (the set S), 'scores': [C]
    first-round Krum scores (+inf if absent), 'num_excluded': int}``.
  """
  f = _common.check_int('num_byzantine', num_byzantine)

  init = stateless_init

  def update(updates, weights, state):
    c = _common.num_clients(updates, weights)
    if c < 4 * f + 3:
      raise ValueError(f'bulyan needs C >= 4f + 3 clients: got C={c} with '
                       f'num_byzantine f={f} (needs C >= {4 * f + 3})')
    weights, present, _ = _common.prepare(updates, weights)
    dist, present = distance_matrix(updates, present)
    n = jnp.sum(present.astype(jnp.int32))
    theta = jnp.minimum(jnp.maximum(n - 2 * f, 1), n)
    beta = jnp.maximum(theta - 2 * f, 1)
    dist = SortedDistances(dist)
    first_scores, _ = dist.scores(present, f)

    def step(t, carry):
      selected, remaining = carry
      pick = dist.ranking(remaining, f)[0][0]
      take = (jnp.arange(c) == pick) & (t < theta)
      return selected | take, remaining & ~take

    selected, _ = lax.fori_loop(0, c - 2 * f, step,
                                (jnp.zeros((c,), bool), present))

    out = _order_stats.columnwise(
        lambda blk: closest_to_median_block(blk, selected, theta, beta), updates)
    out = jax.tree.map(lambda x: jnp.where(n > 0, x, jnp.zeros_like(x)), out)
    total = jnp.sum(jnp.where(selected, weights, 0.0))
    diag = _common.diagnostics(present, selected=selected, scores=first_scores)
    return out, total[None], state, diag

  return Aggregator(init, update)
