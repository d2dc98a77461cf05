"""Geometric median by the smoothed Weiszfeld algorithm (RFA)."""
import jax
import jax.numpy as jnp
from jax import lax

from fl_jax.aggregators import _common
from fl_jax.aggregators.base import Aggregator, stateless_init


def geometric_median(nu: float = 1e-5, tol: float = 1e-1,
                     max_iters: int = 500) -> Aggregator:
  """Weighted geometric median of the updates by smoothed Weiszfeld iterations.

  Robust Federated Aggregation (Pillutla, Kakade and Harchaoui 2019, "Robust
  Aggregation for Federated Learning"), the RFA defence of the edge-case paper
  (Wang et al. 2020; ``nu = 1e-5``, ``tol = 1e-1``, ``max_iters = 500``).
  With ``alpha_i = n_i / sum_j n_j`` over the present clients it approximates

    ``z* = argmin_z sum_i alpha_i ||z - u_i||``

  starting from the weighted mean ``z_0 = sum_i alpha_i u_i`` and iterating

    ``beta_i = alpha_i / max(nu, ||z_t - u_i||)``,
    ``z_{t+1} = sum_i beta_i u_i / sum_i beta_i``

  (``nu`` smooths the objective where ``z`` meets a point), until the
  objective ``g(z) = sum_i alpha_i ||z - u_i||`` changes by at most
  ``tol * g(z_{t+1})`` or ``max_iters`` iterations have run. Every iterate is a
  convex combination of the updates, so the loop carries only the
  coefficients ``beta [C]`` and the distances; each iteration is one weighted
  sum and one distance pass over the stack (a ``lax.while_loop``).

  Non-finite or zero-weight clients get ``alpha_i = 0`` and are skipped by
  every weighted sum (their rows are zeroed first when non-finite, see
  :func:`fl_jax.aggregators._common.masked_dot`). With no present client the result is the zero
  update.

  Args:
    nu: smoothing ``> 0``.
    tol: relative tolerance on the objective, ``> 0``.
    max_iters: maximum number of Weiszfeld iterations, ``>= 1``.

  Returns:
    An :class:`Aggregator`; ``update(updates[C, ...], weights[C], state)``
    returns ``(median[1, ...], total_weight[1], state, diagnostics)`` with
    ``diagnostics = {'iterations': int, 'weiszfeld_weights': [C] float32 (the
    final normalised coefficients beta), 'objective': float, 'num_excluded':
    int}``.
  """
  nu = _common.check_float('nu', nu, positive=True)
  tol = _common.check_float('tol', tol, positive=True)
  max_iters = _common.check_int('max_iters', max_iters, minimum=1)

  init = stateless_init

  def update(updates, weights, state):
    _common.num_clients(updates, weights)
    weights, present, all_finite = _common.prepare(updates, weights)
    total, alpha = _common.normalised(weights)
    mats = [_common.rows(x) for x in jax.tree.leaves(updates)]

    def distances(coef):
      sq = 0.0
      for m in mats:
        z = _common.masked_dot(coef, m, present, all_finite)
        sq = sq + jnp.sum(jnp.square(m - z[None]), axis=1)
      return jnp.where(present, jnp.sqrt(sq), 0.0)   # absent: NaN -> 0, alpha = 0

    dist0 = distances(alpha)
    obj0 = jnp.sum(alpha * dist0)

    def cond(s):
      it, done = s[0], s[1]
      return (it < max_iters) & ~done

    def body(s):
      it, _, _, dist, obj = s
      beta = alpha / jnp.maximum(nu, dist)
      z = jnp.sum(beta)
      beta = jnp.where(z > 0, beta / jnp.where(z > 0, z, 1.0), 0.0)
      dist = distances(beta)
      new_obj = jnp.sum(alpha * dist)
      done = jnp.abs(obj - new_obj) <= tol * new_obj
      return it + 1, done, beta, dist, new_obj

    it, _, beta, _, obj = lax.while_loop(
        cond, body, (jnp.int32(0), jnp.array(False), alpha, dist0, obj0))
    out = _common.weighted_rows(updates, beta, present, all_finite)
    diag = _common.diagnostics(present, iterations=it, weiszfeld_weights=beta,
                               objective=obj)
    return out, total[None], state, diag

  return Aggregator(init, update)
