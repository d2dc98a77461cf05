"""Weak differential privacy: Gaussian noise on the aggregate (a post-stage)."""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fl_jax import tree_math
from fl_jax.aggregators import _common
from fl_jax.aggregators.base import Aggregator
from fl_jax.types import PRNGKey, is_traced


class GaussianNoiseState(NamedTuple):
  """The key for the next call (a typed ``jax.random.key``)."""
  key: PRNGKey


def gaussian_noise(sigma: float, seed: int = 0) -> Aggregator:
  """Adds i.i.d. ``N(0, sigma^2)`` noise to every entry of every row.

  ``u <- u + sigma * xi``, ``xi ~ N(0, I)``: the weak-DP defence of Sun et
  al. 2019, "Can You Really Backdoor Federated Learning?", as used in the
  edge-case paper (Wang et al. 2020; ``sigma = 0.005`` or ``0.001`` on
  CIFAR-10). Chained after a reducing rule it noises the aggregate (one row);
  on a stack it noises each client row independently. The key lives in the
  state: each call splits it, uses one half (one sub-key per leaf) and returns
  the other as the successor, like optax.contrib's differentially private
  aggregate. Noise is drawn in float32 and cast to the leaf dtype.

  Non-finite rows are zeroed with weight 0 first (as :func:`sanitize` does),
  so noise is never added to a NaN.

  Args:
    sigma: standard deviation ``>= 0`` (0 leaves the values unchanged).
    seed: integer seed of the initial key.

  Returns:
    An :class:`Aggregator` with state :class:`GaussianNoiseState`;
    ``update(updates[C, ...], weights[C], state)`` returns
    ``(noised[C, ...], weights[C], new_state, {})``.
  """
  sigma = _common.check_float('sigma', sigma, nonnegative=True)
  seed = _common.check_int('seed', seed)

  def init(template):
    del template
    return GaussianNoiseState(jax.random.key(seed))

  def update(updates, weights, state):
    _common.num_clients(updates, weights)
    weights = jnp.asarray(weights, jnp.float32)
    finite = tree_math.stacked_all_finite(updates) & jnp.isfinite(weights)
    weights = jnp.where(finite, weights, 0.0)
    key, sub = jax.random.split(state.key)
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(sub, len(leaves))
    out = []
    for x, k in zip(leaves, keys):
      ok = finite.reshape((-1,) + (1,) * (x.ndim - 1))
      y = jnp.where(ok, x.astype(jnp.float32), 0.0)
      if is_traced(sigma) or sigma > 0:
        y = y + sigma * jax.random.normal(k, x.shape, jnp.float32)
      out.append(y.astype(x.dtype))
    updates = jax.tree.unflatten(treedef, out)
    return updates, weights, GaussianNoiseState(key), {}

  return Aggregator(init, update)
