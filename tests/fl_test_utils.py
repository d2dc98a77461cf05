"""Small fixtures shared by the test modules (not a test module itself)."""
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import client
from fl_jax import data as data_lib


def tiny_clients(num_clients=6, n=10, seed=0, *, min_size=3, zero_padding=True):
  """``ClientData`` of ``num_clients`` clients with 4x4x1 images and 3 classes.

  Client sizes are drawn from ``[min_size, n]``; with ``zero_padding`` the
  padded images are zeros (so a sum over the padded axis equals one over the
  real samples).
  """
  rng = np.random.default_rng(seed)
  sizes = rng.integers(min_size, n + 1, size=num_clients)
  x = rng.uniform(size=(num_clients, n, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 3, size=(num_clients, n)).astype(np.int32)
  mask = np.arange(n)[None, :] < sizes[:, None]
  if zero_padding:
    x = np.where(mask[..., None, None, None], x, 0.0)
  return data_lib.ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask),
                             jnp.asarray(sizes, jnp.int32))


def shift_update(params, batch, mask, key, round_idx):
  """A cheap client update with a known result: w_i = w + mean of its real x."""
  del key, round_idx
  m = mask.astype(jnp.float32)
  shift = jnp.sum(batch.x.reshape(mask.shape[0], -1).mean(1) * m) / jnp.sum(m)
  new = jax.tree.map(lambda p: p + shift, params)
  return new, client.ClientMetrics(jnp.float32(0), jnp.sum(mask).astype(jnp.int32),
                                   jnp.int32(1))
