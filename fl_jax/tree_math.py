"""Small pytree arithmetic helpers shared by every fl_jax module.

All functions are pure and jit-friendly. "Stacked" trees have a leading client
axis ``C`` on every leaf.
"""
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def tree_add(a: PyTree, b: PyTree) -> PyTree:
  """Leafwise ``a + b``."""
  return jax.tree.map(jnp.add, a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
  """Leafwise ``a - b``."""
  return jax.tree.map(jnp.subtract, a, b)


def tree_scale(a: PyTree, s) -> PyTree:
  """Leafwise ``s * a`` for a scalar ``s``."""
  return jax.tree.map(lambda x: (s * x).astype(x.dtype), a)


def tree_zeros_like(a: PyTree) -> PyTree:
  return jax.tree.map(jnp.zeros_like, a)


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Sum over leaves of ``<a_leaf, b_leaf>``."""
  leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
  return sum(leaves, jnp.zeros((), jnp.float32))


def tree_l2_norm(a: PyTree) -> jax.Array:
  """Global l2 norm of all leaves, ``sqrt(sum_leaf ||leaf||^2)``."""
  sq = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(a)]
  return jnp.sqrt(sum(sq, jnp.zeros((), jnp.float32)))


def tree_where(cond, a: PyTree, b: PyTree) -> PyTree:
  """Leafwise ``where(cond, a, b)`` for a scalar boolean ``cond``."""
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def tree_all_finite(a: PyTree) -> jax.Array:
  """Scalar bool: every entry of every leaf is finite."""
  oks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(a)]
  return jnp.all(jnp.stack(oks)) if oks else jnp.array(True)


# --- stacked trees (leading client axis) -------------------------------------


def stacked_l2_norms(stacked: PyTree) -> jax.Array:
  """Per-client global l2 norm of a stacked tree: ``[C]``."""
  sq = [jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1), axis=1)
        for x in jax.tree.leaves(stacked)]
  return jnp.sqrt(sum(sq))


def stacked_all_finite(stacked: PyTree) -> jax.Array:
  """Per-client bool ``[C]``: every entry of that client's tree is finite."""
  oks = [jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
         for x in jax.tree.leaves(stacked)]
  return jnp.all(jnp.stack(oks), axis=0)


def stacked_ravel(stacked: PyTree) -> jax.Array:
  """Flattens a stacked tree to a matrix ``[C, D]`` (leaves in tree order)."""
  leaves = jax.tree.leaves(stacked)
  return jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def stacked_unravel(matrix: jax.Array, like: PyTree) -> PyTree:
  """Inverse of :func:`stacked_ravel` for one row or many.

  Args:
    matrix: ``[D]`` or ``[C, D]``.
    like: an *unstacked* tree giving leaf shapes and dtypes.
  Returns:
    a tree like ``like`` (with a leading ``C`` axis if ``matrix`` is 2-D).
  """
  leaves, treedef = jax.tree.flatten(like)
  lead = matrix.shape[:-1]
  out, start = [], 0
  for leaf in leaves:
    size = leaf.size
    out.append(matrix[..., start:start + size].reshape(lead + leaf.shape).astype(leaf.dtype))
    start += size
  return jax.tree.unflatten(treedef, out)


def stacked_weighted_sum(stacked: PyTree, weights: jax.Array) -> PyTree:
  """``sum_c weights[c] * stacked[c]`` leafwise (weights ``[C]``)."""
  return jax.tree.map(
      lambda x: jnp.tensordot(weights.astype(x.dtype), x, axes=1), stacked)


def stacked_index(stacked: PyTree, i) -> PyTree:
  """Client ``i`` of a stacked tree."""
  return jax.tree.map(lambda x: x[i], stacked)


def stack_trees(trees) -> PyTree:
  """Stacks a list of identically-shaped trees along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def broadcast_to_clients(tree: PyTree, num_clients: int) -> PyTree:
  """Repeats an unstacked tree ``num_clients`` times along a new axis 0."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_clients,) + x.shape), tree)
