"""Coordinate-wise trimmed mean of the client updates."""
import math

import jax
import jax.numpy as jnp

from fl_jax.aggregators import _common
from fl_jax.aggregators import _order_stats
from fl_jax.aggregators.base import Aggregator, stateless_init


def trimmed_sum_block(vals, t, n):
  """Sum of the ranks ``t .. n-t-1`` of each column of ``vals [C, B]``.

  ``vals`` holds ``n`` finite values per column and ``+inf`` elsewhere;
  ``0 <= t`` and ``n - 2t >= 1``. With ``lo`` / ``hi`` the values of ranks
  ``t`` and ``n-t-1``, the kept sum is

    ``sum{x : lo < x < hi} + (#{x <= lo} - t) lo + (n - t - #{x < hi}) hi``

  (the two correction terms count the copies of ``lo`` and ``hi`` that fall
  inside the kept ranks, so ties are exact), or ``(n - 2t) lo`` if
  ``lo = hi``. The middle sum is formed directly, never as a difference of
  prefix sums, so a huge trimmed value cannot cancel the kept ones.
  """
  keys = _order_stats.to_keys(vals)
  klo = _order_stats.kth_key(keys, t)
  khi = _order_stats.kth_key(keys, n - t - 1)
  inside = (keys > klo[None]) & (keys < khi[None])
  mid = jnp.sum(jnp.where(inside, vals, 0.0), axis=0)
  le_lo = _order_stats.count_le(keys, klo)
  lt_hi = _order_stats.count_lt(keys, khi)
  lo, hi = _order_stats.from_keys(klo), _order_stats.from_keys(khi)
  tf, nf = jnp.asarray(t, jnp.float32), jnp.asarray(n, jnp.float32)
  total = mid + (le_lo - tf) * lo + (nf - tf - lt_hi) * hi
  return jnp.where(klo == khi, (nf - 2 * tf) * lo, total)


def trimmed_sum_network(m, present, n, t):
  """Sum of the kept ranks ``t .. n-t-1`` of the present rows of ``m [C, L]``.

  The median's selection method (:func:`fl_jax.aggregators.median`): absent
  rows go to ``-inf`` (the first ``floor(k/2)`` of the ``k`` absent ones) and
  ``+inf`` (the rest), so the present values sit at sorted positions
  ``o .. o+n-1`` with ``o = floor(k/2)``; a sorting network on the ``C`` rows
  (elementwise ``min`` / ``max``, fused by XLA into one pass over the
  coordinates) gives every position, and the positions ``o+t .. o+n-t-1``
  are summed. ``n`` and ``t`` may be traced.
  """
  c = m.shape[0]
  absent = ~present
  rank_absent = jnp.cumsum(absent) - 1
  low = absent & (rank_absent < (c - n) // 2)
  fill = jnp.where(low, -jnp.inf, jnp.inf)[:, None]
  vals = jnp.where(present[:, None], m, fill)
  rows = _order_stats.select_ranks(vals, list(range(c))) if c > 1 else [vals[0]]
  first = (c - n) // 2 + t
  last = (c - n) // 2 + n - t - 1
  total = jnp.zeros_like(rows[0])
  for p, row in enumerate(rows):
    total = total + jnp.where((p >= first) & (p <= last), row, 0.0)
  return total


_METHODS = ('auto', 'network', 'bisect')
# The full sorting network outgrows bisection sooner than the median's pruned
# one (benchmarks/trimmed_mean.py: 16-20x faster at 10 clients, 1.1-1.4x at 50).
NETWORK_MAX_CLIENTS = 64


def trimmed_mean(beta: float, method: str = 'auto') -> Aggregator:
  """Coordinate-wise ``beta``-trimmed mean of the present clients' updates.

  For every coordinate, sort the ``n`` present values, drop the
  ``t = floor(beta * n)`` smallest and the ``t`` largest, and average the
  remaining ``n - 2t`` (Yin et al. 2018, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML):

    ``TM_beta(u)[j] = 1/(n - 2t) * sum_{r=t}^{n-t-1} u_(r)[j]``.

  The mean is unweighted (data sizes only decide presence); ``beta = 0`` is
  the plain unweighted mean of the present clients. Ties are handled exactly
  (dropped copies of a tied value are counted, not the values themselves).
  ``t`` is clipped to ``(n - 1) // 2`` so at least one value is kept.

  Non-finite or zero-weight clients are removed before trimming: ``n`` counts
  the present clients only and ``t`` follows it (both traced). With ``n = 0``
  the result is the zero update.

  ``method`` picks the algorithm, as for :func:`fl_jax.aggregators.median`:
  ``'network'`` a fused sorting network over the clients, ``'bisect'`` a
  blockwise bisection on the float keys (any number of clients, exact to the
  bit), ``'auto'`` the network for ``C <= 64``.
  Both keep the same ranks; the sums may differ by float rounding.

  Args:
    beta: trimmed fraction per side, ``0 <= beta < 0.5``.
    method: ``'auto'``, ``'network'`` or ``'bisect'``.

  Returns:
    An :class:`Aggregator`; ``update(updates[C, ...], weights[C], state)``
    returns ``(trimmed_mean[1, ...], total_weight[1], state,
    {'num_excluded': int})``.
  """
  beta = _common.check_float('beta', beta)
  if not 0.0 <= beta < 0.5:
    raise ValueError(f'trimmed_mean needs 0 <= beta < 0.5, got beta={beta!r}')
  if method not in _METHODS:
    raise ValueError(f'trimmed_mean method must be one of {_METHODS}, got {method!r}')

  init = stateless_init

  def update(updates, weights, state):
    c = _common.num_clients(updates, weights)
    weights, present, all_finite = _common.prepare(updates, weights)
    n = jnp.sum(present.astype(jnp.int32))
    # t(n) = floor(beta * n) in exact Python arithmetic, tabulated over n <= C.
    table = [min(math.floor(beta * k), max(k - 1, 0) // 2) for k in range(c + 1)]
    t = jnp.asarray(table, jnp.int32)[n]

    if beta == 0.0:
      coef = present.astype(jnp.float32) / jnp.maximum(n, 1).astype(jnp.float32)
      out = _common.weighted_rows(updates, coef, present, all_finite)
    elif method == 'network' or (method == 'auto' and c <= NETWORK_MAX_CLIENTS):
      # Every client present (the usual round) is its own branch: with the kept
      # ranks known when compiling, XLA prunes the network to what they need
      # (benchmarks/trimmed_mean.py: about 10x faster at 50 clients); a round
      # with absent clients takes the general branch with traced ranks.
      t_all = table[c]
      ones = jnp.ones((c,), bool)

      def net(x):
        m = _common.rows(x)
        total = jax.lax.cond(n == c,
                             lambda: trimmed_sum_network(m, ones, c, t_all) / (c - 2 * t_all),
                             lambda: trimmed_sum_network(m, present, n, t) / keep)
        return _common.unrow(total, x)

      keep = jnp.maximum(n - 2 * t, 1).astype(jnp.float32)
      out = jax.tree.map(net, updates)
    else:
      keep = jnp.maximum(n - 2 * t, 1).astype(jnp.float32)
      out = _order_stats.columnwise(
          lambda blk: trimmed_sum_block(jnp.where(present[:, None], blk, jnp.inf),
                                        t, jnp.maximum(n, 1)) / keep,
          updates)
    out = jax.tree.map(lambda x: jnp.where(n > 0, x, jnp.zeros_like(x)), out)
    return out, jnp.sum(weights)[None], state, _common.diagnostics(present)

  return Aggregator(init, update)
