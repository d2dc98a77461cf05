"""Krum and Multi-Krum: select the clients closest to their neighbours."""
from typing import Optional

import jax
import jax.numpy as jnp

from fl_jax import tree_math
from fl_jax.aggregators import _common
from fl_jax.aggregators.base import Aggregator, stateless_init
from fl_jax.types import is_traced


def pairwise_sq_distances(updates, present):
  """Squared l2 distances between the flattened client updates, ``[C, C]``.

  Gram formulation ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 <a, b>``, one
  float32 matmul per leaf (``Precision.HIGHEST``), summed over leaves without
  concatenating them. For stability the updates are first centred on one
  present client (the one of lower-median norm, a permutation-equivariant
  choice that a single huge update cannot move): distances are translation
  invariant, and centring removes the common part of the updates that would
  otherwise cancel catastrophically (e.g. when full models are passed instead
  of differences). Negative round-off is clipped at 0, the diagonal is exactly
  0 and the matrix is symmetrised. Rows and columns of absent clients are
  ``+inf``.

  Finite but huge updates: a present client whose centred squared norm
  exceeds ``finfo(float32).max / (4 C)`` (norm above ~9e17 for ``C = 100``)
  is treated as non-finite, i.e. absent: its row and column are ``+inf`` and
  its diagonal entry too, so callers read the clients that remain present
  as ``isfinite(diag(d))``. Below that bound every distance is at most
  ``(|a| + |b|)^2 <= finfo.max / C`` and a sum of ``C`` of them (a Krum score)
  stays finite, so no ``inf - inf = NaN`` or overflow reaches a ranking.

  Args:
    updates: stacked updates ``[C, ...]``; rows of absent clients may hold
      NaN/Inf (a non-finite row only spoils its own row and column of the
      Gram matrix, which are replaced by ``+inf``).
    present: ``[C]`` bool.
  Returns:
    float32 ``[C, C]``.
  """
  c = present.shape[0]
  norms = tree_math.stacked_l2_norms(updates)
  n = jnp.sum(present.astype(jnp.int32))
  ref = jnp.argsort(jnp.where(present, norms, jnp.inf))[jnp.maximum((n - 1) // 2, 0)]
  ref_ok = present[ref]
  gram = jnp.zeros((c, c), jnp.float32)
  for x in jax.tree.leaves(updates):
    m = _common.rows(x)
    m = m - jnp.where(ref_ok, m[ref], 0.0)[None]
    gram = gram + jnp.dot(m, m.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.diagonal(gram)
  # Squares sum to +inf at worst (never NaN); beyond the bound, distances overflow.
  present = present & (sq <= jnp.finfo(jnp.float32).max / (4.0 * c))
  d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  d = 0.5 * (d + d.T)
  d = jnp.where(jnp.eye(c, dtype=bool), 0.0, d)
  both = present[:, None] & present[None, :]
  return jnp.where(both, d, jnp.inf)


def distance_matrix(updates, present):
  """``(pairwise_sq_distances, present)``, ``present`` less the huge clients.

  See :func:`pairwise_sq_distances`: a client whose squared distances would
  overflow float32 is dropped from ``present`` like a non-finite one.
  """
  dist = pairwise_sq_distances(updates, present)
  return dist, jnp.isfinite(jnp.diagonal(dist))


class SortedDistances:
  """Row-sorted distances for repeated neighbour sums over changing client sets."""

  def __init__(self, dist):
    c = dist.shape[0]
    self.eye = jnp.arange(c)
    masked = jnp.where(jnp.eye(c, dtype=bool), jnp.inf, dist)
    self.order = jnp.argsort(masked, axis=1)
    self.sorted = jnp.take_along_axis(masked, self.order, axis=1)

  def scores(self, member, num_byzantine: int):
    """Krum scores of the clients in ``member`` against the other members.

    ``score_i = sum of the k smallest ||u_i - u_j||^2`` over members
    ``j != i``, with ``k = |member| - f - 2`` clipped to at least 1 (``k`` is
    traced because ``|member|`` is). Non-members get ``+inf``.

    Returns:
      ``(score, spread)``, both ``[C]``: ``spread_i`` is the sum of squared
      distances to *all* other members, the tie-breaker used by
      :meth:`ranking` (with ``k = 1`` two mutual nearest neighbours always tie).
    """
    size = jnp.sum(member.astype(jnp.int32))
    k = jnp.maximum(size - num_byzantine - 2, 1)
    mem = member[self.order] & (self.order != self.eye[:, None])
    rank = jnp.cumsum(mem.astype(jnp.int32), axis=1)
    score = jnp.sum(jnp.where(mem & (rank <= k), self.sorted, 0.0), axis=1)
    spread = jnp.sum(jnp.where(mem, self.sorted, 0.0), axis=1)
    return (jnp.where(member, score, jnp.inf), jnp.where(member, spread, jnp.inf))

  def ranking(self, member, num_byzantine: int):
    """Members ordered by Krum score, ties by spread, then by index: ``[C]`` indices."""
    score, spread = self.scores(member, num_byzantine)
    return jnp.lexsort((self.eye, spread, score)), score


def _check_krum_clients(name, c, f):
  if c <= 2 * f + 2:
    raise ValueError(f'{name} needs more than 2f + 2 clients: got C={c} with '
                     f'num_byzantine f={f} (needs C >= {2 * f + 3})')


def multi_krum(num_byzantine: int, m: Optional[int] = None) -> Aggregator:
  """Multi-Krum: data-size-weighted mean of the ``m`` best Krum-scored clients.

  For ``n`` present clients and ``f`` assumed Byzantine ones, client ``i``'s
  score is the sum of squared distances to its ``n - f - 2`` closest other
  present clients,

    ``s(i) = sum_{j in N_i} ||u_i - u_j||^2``,

  and Multi-Krum averages the ``m`` clients with the lowest scores, weighted by
  their data sizes: ``sum_{i in S} n_i u_i / sum_{i in S} n_i`` (Blanchard et
  al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
  Descent", NeurIPS; the edge-case paper uses ``m = n - f``). Distances use one
  Gram matmul per leaf, see :func:`pairwise_sq_distances`. Ties in score are
  broken by the sum of squared distances to all other present clients, then
  by client index.

  Non-finite or zero-weight clients, and finite ones too large for float32
  distances (see :func:`pairwise_sq_distances`), get score ``+inf``, are never
  selected and are not anyone's neighbour; ``n`` counts the present clients
  (traced). If exclusions leave fewer than ``2f + 3`` present clients the
  neighbour count is clipped to at least 1 (the Byzantine guarantee no longer
  holds) and at most ``n`` clients are selected. With ``n = 0`` the result is
  the zero update.

  Args:
    num_byzantine: ``f >= 0``; the stack must have ``C > 2f + 2`` clients
      (checked at trace time, ValueError).
    m: number of clients averaged, ``1 <= m <= C``; default ``n - f`` over
      the *present* clients (at least 1), so that excluding a client does not
      let the selection reach further into the remaining ones.

  Returns:
    An :class:`Aggregator`; ``update(updates[C, ...], weights[C], state)``
    returns ``(aggregate[1, ...], selected_weight[1], state, diagnostics)``
    with ``diagnostics = {'scores': [C] float32 (+inf if absent),
    'selected': [C] bool, 'num_excluded': int}``.
  """
  f = _common.check_int('num_byzantine', num_byzantine)
  if m is not None:
    m = _common.check_int('m', m, minimum=1)
  return _krum_rule('multi_krum', f, m)


def krum(num_byzantine: int) -> Aggregator:
  """Krum: the single present client with the lowest Krum score.

  ``s(i) = sum_{j in N_i} ||u_i - u_j||^2`` over the ``n - f - 2`` present
  clients closest to ``i``; the aggregate is ``u_{i*}`` with
  ``i* = argmin_i s(i)`` (ties as in :func:`multi_krum`). Blanchard et al. 2017, "Machine
  Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS.
  Exclusion of non-finite / zero-weight clients, shapes and diagnostics as in
  :func:`multi_krum` (it is Multi-Krum with ``m = 1``).

  Args:
    num_byzantine: ``f >= 0``; needs ``C > 2f + 2`` (ValueError at trace time).
  """
  f = _common.check_int('num_byzantine', num_byzantine)
  return _krum_rule('krum', f, 1)


def _krum_rule(name, f, m):

  init = stateless_init

  def update(updates, weights, state):
    c = _common.num_clients(updates, weights)
    _check_krum_clients(name, c, f)
    if m is not None and not is_traced(m) and m > c:
      raise ValueError(f'{name}: m={m} exceeds the number of clients C={c}')
    weights, present, all_finite = _common.prepare(updates, weights)
    dist, present = distance_matrix(updates, present)
    n = jnp.sum(present.astype(jnp.int32))
    m_eff = jnp.maximum(n - f, 1) if m is None else m
    order, scores = SortedDistances(dist).ranking(present, f)
    position = jnp.zeros((c,), jnp.int32).at[order].set(jnp.arange(c))
    selected = present & (position < jnp.minimum(m_eff, n))
    w = jnp.where(selected, weights, 0.0)
    total = jnp.sum(w)
    coef = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
    out = _common.weighted_rows(updates, coef, present, all_finite)
    diag = _common.diagnostics(present, scores=scores, selected=selected)
    return out, total[None], state, diag

  return Aggregator(init, update)
