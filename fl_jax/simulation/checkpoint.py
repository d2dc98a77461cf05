"""Checkpoints of the server state as a single ``.npz`` file.

Leaves are stored under their pytree path; typed PRNG keys are stored as their
raw key data and re-wrapped on load. Writes go to a temporary file that is then
renamed, so a run killed mid-write leaves the previous checkpoint intact.
"""
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_KEY_SUFFIX = '::prng_key'


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(path: str, tree: Any) -> None:
  """Saves a pytree of arrays (typed keys allowed) to ``path`` atomically."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  arrays = {}
  for kp, leaf in flat:
    name = jax.tree_util.keystr(kp)
    if _is_key(leaf):
      arrays[name + _KEY_SUFFIX] = np.asarray(jax.random.key_data(leaf))
    else:
      arrays[name] = np.asarray(leaf)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp.npz'
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def load(path: str, template: Any) -> Any:
  """Loads a checkpoint into the structure of ``template``.

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: the checkpoint does not match the template (names or shapes).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'no checkpoint at {path}')
  with np.load(path) as z:
    stored = {k: z[k] for k in z.files}
  flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for kp, leaf in flat:
    name = jax.tree_util.keystr(kp)
    if _is_key(leaf):
      if name + _KEY_SUFFIX not in stored:
        raise ValueError(f'checkpoint {path} lacks PRNG key {name}')
      leaves.append(jax.random.wrap_key_data(jnp.asarray(stored[name + _KEY_SUFFIX]),
                                             impl=jax.random.key_impl(leaf)))
      continue
    if name not in stored:
      raise ValueError(f'checkpoint {path} lacks {name}; it was written by a '
                       'different model or configuration')
    arr = stored[name]
    if arr.shape != tuple(np.shape(leaf)):
      raise ValueError(f'checkpoint {path}: {name} has shape {arr.shape}, '
                       f'expected {np.shape(leaf)}')
    leaves.append(jnp.asarray(arr, dtype=jnp.asarray(leaf).dtype))
  return jax.tree.unflatten(treedef, leaves)
