"""Norm-difference clipping of each client update (a pre-processing stage)."""
import jax
import jax.numpy as jnp

from fl_jax import tree_math
from fl_jax.aggregators import _common
from fl_jax.aggregators.base import Aggregator, stateless_init


def clip_norm(max_norm: float) -> Aggregator:
  """Scales every client update into the l2 ball of radius ``M = max_norm``.

  ``u_i <- u_i * min(1, M / ||u_i||_2)``, the norm taken over the whole
  flattened update. Since updates are differences from the global model,
  this is the norm-difference clipping (NDC) defence of Sun et al. 2019, "Can
  You Really Backdoor Federated Learning?", used in the edge-case paper (Wang
  et al. 2020) with ``M = 2`` for images and ``M = 1.5`` for text. A
  pre-processing stage: the stack keeps its ``C`` rows and weights, so it is
  chained before a reducing rule.

  Non-finite clients are zeroed with weight 0 (as :func:`sanitize` does, fused
  into the scaling), so the rule after this stage treats them as absent. A
  finite update whose squared norm overflows float32 is scaled to zero.

  Args:
    max_norm: ``M > 0``.

  Returns:
    An :class:`Aggregator`; ``update(updates[C, ...], weights[C], state)``
    returns ``(clipped[C, ...], weights[C], state, diagnostics)`` with
    ``diagnostics = {'update_norms': [C] float32 norms before clipping (+inf
    for non-finite clients), 'clipped': [C] bool, 'num_excluded': int}``.
  """
  max_norm = _common.check_float('max_norm', max_norm, positive=True)

  init = stateless_init

  def update(updates, weights, state):
    _common.num_clients(updates, weights)
    weights = jnp.asarray(weights, jnp.float32)
    finite = tree_math.stacked_all_finite(updates) & jnp.isfinite(weights)
    weights = jnp.where(finite, weights, 0.0)
    norms = tree_math.stacked_l2_norms(updates)
    scale = jnp.where(norms > max_norm, max_norm / norms, 1.0)

    def clip(x):
      s = scale.reshape((-1,) + (1,) * (x.ndim - 1))
      ok = finite.reshape(s.shape)
      return jnp.where(ok, x.astype(jnp.float32) * s, 0.0).astype(x.dtype)

    out = jax.tree.map(clip, updates)
    diag = dict(update_norms=jnp.where(finite, norms, jnp.inf),
                clipped=finite & (norms > max_norm),
                num_excluded=jnp.sum(~finite).astype(jnp.int32))
    return out, weights, state, diag

  return Aggregator(init, update)
