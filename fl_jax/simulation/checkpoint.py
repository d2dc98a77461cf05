"""Checkpoints of the server state as a single ``.npz`` file.

Leaves are stored under their pytree path; typed PRNG keys are stored as their
raw key data and re-wrapped on load. Writes go to a temporary file that is then
renamed, so a run killed mid-write leaves the previous checkpoint intact; a
write that fails (e.g. a full disk) removes its partial temporary file, and a
checkpoint that cannot be read raises :class:`CheckpointCorruptError` saying
what to do.
"""
import errno
import os
from typing import Any
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

_KEY_SUFFIX = '::prng_key'


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


class CheckpointCorruptError(ValueError):
  """A checkpoint file exists but is truncated or not a checkpoint."""


def _tmp_path(path: str) -> str:
  return path + '.tmp.npz'


def save(path: str, tree: Any) -> None:
  """Saves a pytree of arrays (typed keys allowed) to ``path`` atomically.

  The arrays go to ``path + '.tmp.npz'`` (flushed to disk), which then
  replaces ``path``. If writing fails the temporary file is removed and an
  ``OSError`` naming ``path`` is raised; the previous checkpoint is kept.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  arrays = {}
  for kp, leaf in flat:
    name = jax.tree_util.keystr(kp)
    if _is_key(leaf):
      arrays[name + _KEY_SUFFIX] = np.asarray(jax.random.key_data(leaf))
    else:
      arrays[name] = np.asarray(leaf)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = _tmp_path(path)
  try:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    kept = 'the previous checkpoint is kept' if os.path.exists(path) else 'nothing was saved'
    hint = ' (the disk is full: free space and resume)' if e.errno == errno.ENOSPC else ''
    raise OSError(e.errno, f'could not write checkpoint {path}: {e.strerror or e}{hint}; '
                  f'{kept}') from e


def load(path: str, template: Any) -> Any:
  """Loads a checkpoint into the structure of ``template``.

  Leaves whose template is a NumPy array or scalar come back as NumPy with
  the template's dtype (so float64 host values stay float64 without
  ``jax_enable_x64``); the others as JAX arrays.

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    CheckpointCorruptError: the file is truncated or not a checkpoint.
    ValueError: the checkpoint does not match the template (names or shapes).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'no checkpoint at {path}')
  try:
    with np.load(path, allow_pickle=False) as z:
      stored = {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as e:
    lines = str(e).strip().splitlines()
    raise CheckpointCorruptError(
        f'checkpoint {path} is corrupt or truncated ({type(e).__name__}: '
        f'{lines[0] if lines else ""}); it cannot be loaded. Move it aside or delete it, '
        'then either start over (rerun without --resume, or with an empty workdir) or put '
        'back a good copy of the file.') from e
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
    if isinstance(leaf, (np.ndarray, np.generic)):  # host values keep their dtype (float64)
      leaves.append(np.asarray(arr, dtype=leaf.dtype))
    else:
      leaves.append(jnp.asarray(arr, dtype=jnp.asarray(leaf).dtype))
  return jax.tree.unflatten(treedef, leaves)
