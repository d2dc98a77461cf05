"""Typed nodes of a lazy zonotope: symbol blocks and linear operators.

A zonotope value inside a propagation is ``center + L(e)``: ``e`` is the
concatenation of symbol blocks (``Source``: the input box, one block of
fresh symbols per ReLU / max-pool layer) and ``L`` a DAG of linear
operators. Every order of ``planner`` walks this DAG; it tells the kinds
apart by type:

* ``Source``     -- ``beta * e``, ``e in [-1, 1]^shape`` (generators
  ``diag(beta)``); ``sparse`` when most ``beta`` are zero (ReLU symbols);
* ``ConvOp``     -- a convolution with a concrete kernel (``conv_ops.Conv``);
* ``DenseOp``    -- a ``dot_general`` with a concrete weight whose Jacobian
  (``rows()``) is the weight itself, so a backward pull starts below it;
* ``PatchOp``    -- ``conv_general_dilated_patches`` (a one-hot kernel),
  fused with the dense product above it into one ``ConvOp``;
* ``ScaleOp``    -- ``scale * x`` elementwise (ReLU slopes);
* ``SumOp``      -- the sum of its inputs (a ReLU layer adds its symbols);
* ``PrimOp``     -- any other linear primitive, run through ``bind``.

Shapes are those of one example (the interpreter keeps a batch axis of 1).
"""
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Mono(tonicity) classes for the exact |L| shortcut: 'both' = at most one
# non-zero per row and per column (permutation / diagonal / slice / pad),
# 'row' = at most one per row (broadcast, gather, patch extraction),
# 'none' = mixing (dense, conv, reduce_sum, ...).
BOTH, ROW, NONE = 'both', 'row', 'none'


class Source:
  """A block of error symbols: value ``beta * e``, ``e in [-1, 1]^shape``.

  Attributes:
    beta: ``[*shape]`` non-negative radii.
    index: position among the propagation's blocks.
    sparse: ``beta`` is expected to be zero at most elements (a ReLU
      layer's fresh symbols exist only at crossing neurons); orders that
      can skip zero columns then do.
  """
  inputs = ()
  cost = 0.0

  def __init__(self, beta, index: int, sparse: bool = False):
    self.beta = beta
    self.sparse = bool(sparse)
    self.shape = tuple(beta.shape)
    self.dtype = beta.dtype
    self.size = int(np.prod(self.shape, dtype=np.int64))
    self.index = index
    self.sources = frozenset([index])
    self.name = f'source{index}'


class Op:
  """``value = fn(*input_values)``, ``fn`` linear in its inputs jointly.

  Attributes:
    fn: the linear function on one example (no generator axis).
    inputs: input nodes (``Op`` or ``Source``).
    shape, dtype, size: of the value.
    abs_fn: ``abs_fn(*radii) -> radius``, the entrywise-|.| of the linear
      map applied to non-negative vectors (``None``: no shortcut).
    mono: ``BOTH``, ``ROW`` or ``NONE`` (see the module constants).
    cost: FLOPs to apply ``fn`` to one vector (planner estimate).
    name: for plans and errors.
    sources: indices of the blocks this value depends on.
  """
  elementwise = False     # shape-preserving and non-mixing (colouring)

  def __init__(self, fn: Callable, inputs: Sequence, shape, dtype, *,
               abs_fn: Optional[Callable] = None, mono: str = NONE,
               cost: Optional[float] = None, name: str = 'op'):
    self.fn = fn
    self.inputs = tuple(inputs)
    self.shape = tuple(shape)
    self.dtype = dtype
    self.size = int(np.prod(self.shape, dtype=np.int64))
    self.abs_fn = abs_fn
    self.mono = mono
    self.cost = float(self.size if cost is None else cost)
    self.name = name
    self.sources = frozenset().union(*[i.sources for i in self.inputs])
    self._vjp = None

  def transpose(self, ct) -> List[jax.Array]:
    """The transposed map on cotangents ``ct[n, *shape]``.

    Returns one ``[n, *input.shape]`` array per input (``jax.vjp`` of
    ``fn``, vmapped; subclasses override with faster forms).
    """
    if self._vjp is None:
      zeros = [jnp.zeros(i.shape, i.dtype) for i in self.inputs]
      _, self._vjp = jax.vjp(self.fn, *zeros)
    return list(jax.vmap(self._vjp)(ct))


class ConvOp(Op):
  """A convolution ``conv(x, K)`` with a concrete kernel.

  Attributes:
    conv: the ``conv_ops.Conv`` (fast forward, transpose and ``|.|``).
  """

  def __init__(self, conv, node, cost: float, name: str = 'conv'):
    super().__init__(conv, [node], conv.out_shape, conv.k.dtype,
                     abs_fn=conv.abs, mono=NONE, cost=cost, name=name)
    self.conv = conv

  def transpose(self, ct):
    return [self.conv.transpose(ct)]


class DenseOp(Op):
  """A ``dot_general`` in one abstract operand with a concrete weight.

  Attributes:
    rows: ``() -> [n_out, *input.shape]``, the Jacobian (the weight,
      rearranged without arithmetic).
  """

  def __init__(self, fn, node, shape, dtype, *, abs_fn, cost, rows):
    super().__init__(fn, [node], shape, dtype, abs_fn=abs_fn, mono=NONE,
                     cost=cost, name='dense')
    self.rows = rows


class PatchOp(Op):
  """``conv_general_dilated_patches``: a conv with a one-hot kernel.

  Attributes:
    patch: ``(conv params, (channel, taps, spatial), in_channels,
      in_shape)`` (see ``interpreter._patch_info``).
  """

  def __init__(self, fn, node, shape, dtype, *, abs_fn, cost, patch):
    super().__init__(fn, [node], shape, dtype, abs_fn=abs_fn, mono=ROW,
                     cost=cost, name='patches')
    self.patch = patch


class ScaleOp(Op):
  """``scale * x`` elementwise, ``scale`` a concrete array of ``x``'s shape."""
  elementwise = True

  def __init__(self, scale, node):
    super().__init__(lambda v: scale * v, [node], node.shape, node.dtype,
                     abs_fn=lambda r: jnp.abs(scale) * r, mono=BOTH,
                     name='scale')
    self.scale = scale


class SumOp(Op):
  """The sum of several nodes of one shape."""
  elementwise = True

  def __init__(self, nodes: Sequence):
    super().__init__(lambda *xs: sum(xs[1:], xs[0]), nodes, nodes[0].shape,
                     nodes[0].dtype, abs_fn=lambda *rs: sum(rs[1:], rs[0]),
                     mono=BOTH, name='sum')

  def transpose(self, ct):
    return [ct] * len(self.inputs)


class PrimOp(Op):
  """Any other linear primitive (``prim.bind`` on its operands).

  Attributes:
    prim_name, prim_params: the primitive and its parameters.
    elementwise: shape-preserving elementwise op of one abstract operand.
  """

  def __init__(self, fn, inputs, shape, dtype, *, abs_fn, mono, cost,
               prim_name: str, prim_params, elementwise: bool = False):
    super().__init__(fn, inputs, shape, dtype, abs_fn=abs_fn, mono=mono,
                     cost=cost, name=prim_name)
    self.prim_name = prim_name
    self.prim_params = prim_params
    self.elementwise = bool(elementwise)


def sum_node(nodes: Sequence):
  """The sum of several nodes of one shape (the node itself if alone)."""
  return nodes[0] if len(nodes) == 1 else SumOp(nodes)


def diag_node(scale, node) -> ScaleOp:
  """``scale * node`` (elementwise, ``scale`` a concrete array)."""
  return ScaleOp(scale, node)


def subgraph(node, targets) -> List:
  """Nodes between ``node`` and blocks ``targets``, node first (topo order)."""
  seen, order = set(), []
  stack = [(node, False)]
  while stack:
    n, done = stack.pop()
    if done:
      order.append(n)
      continue
    if id(n) in seen or not (n.sources & targets):
      continue
    seen.add(id(n))
    stack.append((n, True))
    for i in n.inputs:
      if id(i) not in seen:
        stack.append((i, False))
  order.reverse()
  return order


def chain(node, s: Source):
  """``[(op, input position)]`` from ``s`` up to ``node`` if a single path."""
  path = []
  cur = node
  while cur is not s:
    if not isinstance(cur, Op):
      return None
    deps = [k for k, i in enumerate(cur.inputs) if s.index in i.sources]
    if len(deps) != 1:
      return None
    path.append((cur, deps[0]))
    cur = cur.inputs[deps[0]]
  path.reverse()
  return path


def abs_dot(ct, beta):
  """``|ct| @ beta`` for ``ct[n, k]`` and ``beta[k] >= 0``.

  Written as ``sum(|ct * beta|)``: XLA:CPU fuses ``abs`` into a dot as a
  scalar loop (~2 GB/s), while the multiply-abs-reduce fusion streams at
  memory speed (6x faster on the MNIST CNN's pulls).
  """
  return jnp.sum(jnp.abs(ct * beta), axis=-1)
