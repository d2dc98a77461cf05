"""Coordinate-wise median of the client updates."""
import jax
import jax.numpy as jnp

from fl_jax.aggregators import _common
from fl_jax.aggregators import _order_stats
from fl_jax.aggregators.base import Aggregator, stateless_init

_METHODS = ('auto', 'network', 'bisect')


def _median_network(m, present, n):
  """Median of the present rows of ``m [C, L]`` with a selection network.

  Absent rows are pushed to ``-inf`` (the first ``floor(k/2)`` of the ``k``
  absent ones) and ``+inf`` (the rest). The present values then sit at sorted
  positions ``floor(k/2) .. floor(k/2)+n-1``, and for every ``k`` their middle
  one(s) are among the two static ranks ``C//2 - 1`` and ``C//2``:
  ``n`` even -> mean of both; ``n`` odd -> rank ``C//2 - 1`` if ``C`` is even,
  rank ``C//2`` if ``C`` is odd.
  """
  c = m.shape[0]
  if c == 1:
    return m[0]
  absent = ~present
  rank_absent = jnp.cumsum(absent) - 1
  low = absent & (rank_absent < (c - n) // 2)
  fill = jnp.where(low, -jnp.inf, jnp.inf)[:, None]
  vals = jnp.where(present[:, None], m, fill)
  s0, s1 = _order_stats.select_ranks(vals, [c // 2 - 1, c // 2])
  odd = (n % 2) == 1
  single = s0 if c % 2 == 0 else s1
  return jnp.where(odd, single, 0.5 * s0 + 0.5 * s1)


def median_block(vals, n):
  """Median of each column of ``vals [C, B]`` holding ``n`` finite values, ``+inf`` elsewhere.

  The lower middle value (rank ``(n-1)//2``) is found by bisection on the
  keys; the upper one (rank ``n//2``) is the same value if it has a second
  copy at or below it, else the next larger value. Returns
  ``0.5 lower + 0.5 upper``.
  """
  keys = _order_stats.to_keys(vals)
  k1 = _order_stats.kth_key(keys, jnp.maximum((n - 1) // 2, 0))
  many = _order_stats.count_le(keys, k1) > jnp.asarray(n // 2, jnp.float32)
  k2 = jnp.where(many, k1, _order_stats.next_key(keys, k1))
  return 0.5 * _order_stats.from_keys(k1) + 0.5 * _order_stats.from_keys(k2)


def median(method: str = 'auto') -> Aggregator:
  """Coordinate-wise median of the present clients' updates.

  For every coordinate ``j`` the aggregate is ``median{u_i[j] : i present}``
  (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
  Statistical Rates", ICML). Weights (data sizes) do not enter the median;
  they only decide presence.

  Even number of present clients ``n``: the mean of the two middle values,
  ``(u_(n/2) + u_(n/2+1)) / 2`` (1-indexed order statistics), computed as
  ``0.5 a + 0.5 b`` so it cannot overflow. Ties need no special rule (the
  order statistics are values).

  Non-finite or zero-weight clients are *removed* from the order statistics:
  the median is taken over the ``n`` present clients only (``n`` is traced, so
  the middle rank is dynamic). With ``n = 0`` the result is the zero update.

  The result is exact (an order statistic of float32 values, or the mean of
  two). ``method`` picks the algorithm; all give the same values:
  ``'network'`` a fused selection network (fast for up to ~160 clients,
  compile time growing with ``C``), ``'bisect'`` a blockwise bisection on the
  float keys (any number of clients), ``'auto'`` the network for
  ``C <= 128`` else bisection (timings in ``_order_stats``). On XLA:CPU the
  network's float ``min``/``max`` treat denormals as zero and may return
  ``-0.0`` for ``+0.0``; the bisection is exact to the bit.

  Args:
    method: ``'auto'``, ``'network'`` or ``'bisect'``.

  Returns:
    An :class:`Aggregator` whose ``update(updates[C, ...], weights[C], state)``
    returns ``(median[1, ...], total_weight[1], state, diagnostics)`` with
    ``diagnostics = {'num_excluded': int}``; leaf shapes and dtypes are kept.
  """
  if method not in _METHODS:
    raise ValueError(f'median method must be one of {_METHODS}, got {method!r}')

  init = stateless_init

  def update(updates, weights, state):
    c = _common.num_clients(updates, weights)
    weights, present, _ = _common.prepare(updates, weights)
    n = jnp.sum(present.astype(jnp.int32))
    use_network = method == 'network' or (
        method == 'auto' and c <= _order_stats.NETWORK_MAX_CLIENTS)
    if use_network:
      out = jax.tree.map(
          lambda x: _common.unrow(_median_network(_common.rows(x), present, n), x),
          updates)
    else:
      out = _order_stats.columnwise(
          lambda blk: median_block(jnp.where(present[:, None], blk, jnp.inf), n),
          updates)
    out = jax.tree.map(lambda x: jnp.where(n > 0, x, jnp.zeros_like(x)), out)
    return out, jnp.sum(weights)[None], state, _common.diagnostics(present)

  return Aggregator(init, update)
