"""Lazy zonotopes: linear maps from error-symbol blocks to network values.

A zonotope value ``v`` inside the network is kept as ``center + L(e)`` where
``e`` is the concatenation of *symbol blocks* and ``L`` is linear. Every block
is a ``Source`` with a non-negative radius ``beta`` (the input box is one
block, every ReLU layer adds one block of fresh symbols, one per neuron), so
its generators are ``diag(beta)``. ``L`` is never materialised eagerly; it is
a DAG of ``Op`` nodes (each a linear function of its inputs, e.g. a conv with
the model's kernel, a ReLU slope ``diag(lambda)``, a reshape, a sum).

Bounds are only needed at ReLU / max-pool inputs and at the output, where the
radius ``sum_j |L_j| beta_j`` is formed by whichever association order of
the matrix chain is cheapest (the same numbers either way):

* **abs shortcut** (exact, O(one pass)): if a block reaches ``v`` through a
  chain with a single mixing op (dense / conv / sum) and otherwise only
  permutations, diagonal scalings and selections, ``|L| beta`` equals the
  chain of ``|op|`` applied to ``beta`` (e.g. ``conv(beta, |K|)``);
* **coloured forward** (exact): through a chain of convolutions and
  elementwise ops, input elements whose receptive fields never overlap share
  one forward pass (Jacobian colouring, Curtis-Powell-Reid), because each
  output then sees at most one of them: ``sum_colours |L g_c|`` equals
  ``sum_i |L e_i| beta_i``. For the MNIST CNN's second conv: 100 passes
  instead of 784;
* **forward**: push ``diag(beta)`` (``k`` generators) through the ops;
  results are memoised so later layers continue from them;
* **local (patch) pull** (exact): through a chain of convolutions with
  ReLU slopes and fresh symbols in between, every output row is non-zero
  only on its receptive field, so it is pulled back as a window (one small
  transposed conv per layer, see ``local_chain``). For the CIFAR CNN's
  third and fourth convs this is about 10x fewer FLOPs than colouring or a
  full backward pull;
* **windowed forward into a dense layer** (exact): a dense layer over a conv
  chain gets its radii block by block: the symbols of a block of
  ``stride x stride`` positions reach a fixed window of the chain's output,
  so one GEMM of the dense weights restricted to that window with the block's
  (local-pull) rows gives the block's coefficients, for all points of a
  chunk at once; only the block columns that can be non-zero (crossing
  ReLU neurons, input pixels that reach an active neuron) are gathered,
  pooled over the chunk. See ``windowed``;
* **backward (adjoint)**: pull the ``n`` unit rows of ``v`` back through the
  transposed ops to all remaining blocks at once (in balanced row blocks, so
  memory stays bounded). A dense layer at the start of the pull costs
  nothing: its rows are the weight matrix itself.

The planner compares ``k * (path FLOPs)``, ``colours * (path FLOPs)``,
the local pull's FLOPs, the windowed GEMMs' FLOPs and ``n * (path FLOPs)``.
For the MNIST CNN of Zizzo et al. (2021, App. D) the textbook forward order
pushes every generator through the 1568 -> 1000 dense layer (about 20 GFLOP
per point); pulling the 1000 rows of that layer back through the convs
costs about 1.4 GFLOP in thin transposed convolutions; the windowed order
costs at most 0.45 GFLOP of GEMMs for the input box plus, for the first
ReLU layer's symbols, up to 1.05 GFLOP when most neurons cross; on the CPU,
with the kept columns, the whole certification ran 0.43 GFLOP per point at
eps = 0.02 and 1.14 / 1.38 at 0.05 / 0.1 (``benchmarks/flop_count.py``).

All of this runs at trace time on one example (vmap it over points); the
arrays are ordinary traced JAX values, so jit, vmap and grad go through.
"""
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax.certification import local_chain
from fl_jax.certification import windowed

# Mono(tonicity) classes for the exact |L| shortcut: 'both' = at most one
# non-zero per row and per column (permutation / diagonal / slice / pad),
# 'row' = at most one per row (broadcast, gather, patch extraction),
# 'none' = mixing (dense, conv, reduce_sum, ...).
BOTH, ROW, NONE = 'both', 'row', 'none'

# Relative slowness of XLA:CPU convolutions versus GEMMs per FLOP.
CONV_COST_FACTOR = 4.0


class Source:
  """A block of error symbols: value ``beta * e``, ``e in [-1, 1]^shape``.

  ``sparse``: ``beta`` is expected to be zero at most elements (a ReLU
  layer's fresh symbols exist only at crossing neurons); orders that can
  skip zero columns then do.
  """

  def __init__(self, beta, index: int, sparse: bool = False):
    self.beta = beta
    self.sparse = bool(sparse)
    self.shape = tuple(beta.shape)
    self.dtype = beta.dtype
    self.size = int(np.prod(self.shape, dtype=np.int64))
    self.index = index
    self.inputs = ()
    self.sources = frozenset([index])
    self.cost = 0.0
    self.name = f'source{index}'


class Op:
  """``value = fn(*input_values)`` with ``fn`` linear in its inputs jointly.

  Attributes:
    fn: the linear function on one example (no generator axis).
    inputs: input nodes (``Op`` or ``Source``).
    shape, dtype: of the value.
    abs_fn: ``abs_fn(*radii) -> radius``, the entrywise-|.| of the linear
      map applied to non-negative vectors (``None``: no shortcut).
    mono: ``'both'``, ``'row'`` or ``'none'`` (see module constants).
    cost: FLOPs to apply ``fn`` to one vector (planner estimate).
    explicit_rows: optional ``() -> rows[n_out, *input.shape]``, the
      Jacobian of a unary op, formed without arithmetic (dense layers).
    is_sum: plain sum of the inputs (handled without zero padding).
    transpose_fn: optional fast ``ct[n, *shape] -> ct_in[n, *in.shape]`` of a
      unary op (default: ``jax.vjp`` of ``fn``, vmapped).
  """

  def __init__(self, fn: Callable, inputs: Sequence, shape, dtype, *,
               abs_fn: Optional[Callable] = None, mono: str = NONE,
               cost: Optional[float] = None, name: str = 'op',
               explicit_rows: Optional[Callable] = None, is_sum: bool = False,
               transpose_fn: Optional[Callable] = None):
    self.fn = fn
    self.inputs = tuple(inputs)
    self.shape = tuple(shape)
    self.dtype = dtype
    self.size = int(np.prod(self.shape, dtype=np.int64))
    self.abs_fn = abs_fn
    self.mono = mono
    self.cost = float(self.size if cost is None else cost)
    self.name = name
    self.explicit_rows = explicit_rows
    self.is_sum = is_sum
    self.sources = frozenset().union(*[i.sources for i in self.inputs])
    self.elementwise = False   # shape-preserving, no mixing (for colouring)
    self.conv = None           # a conv_ops.Conv (for colouring)
    self._vjp = None
    self._transpose_fn = transpose_fn

  def transpose(self, ct):
    """Applies the transposed map to a batch of cotangents ``ct[n, *shape]``.

    Returns one ``[n, *input.shape]`` array per input.
    """
    if self.is_sum:
      return [ct] * len(self.inputs)
    if self._transpose_fn is not None:
      return [self._transpose_fn(ct)]
    if self._vjp is None:
      zeros = [jnp.zeros(i.shape, i.dtype) for i in self.inputs]
      _, self._vjp = jax.vjp(self.fn, *zeros)
    return list(jax.vmap(self._vjp)(ct))


def sum_node(nodes: Sequence) -> 'Op':
  """The sum of several nodes of one shape."""
  if len(nodes) == 1:
    return nodes[0]
  op = Op(lambda *xs: sum(xs[1:], xs[0]), nodes, nodes[0].shape,
          nodes[0].dtype, abs_fn=lambda *rs: sum(rs[1:], rs[0]), mono=BOTH,
          name='sum', is_sum=True)
  op.elementwise = True
  return op


def diag_node(scale, node) -> 'Op':
  """``scale * node`` (elementwise, ``scale`` a concrete array)."""
  op = Op(lambda v: scale * v, [node], node.shape, node.dtype,
          abs_fn=lambda r: jnp.abs(scale) * r, mono=BOTH, name='diag')
  op.elementwise = True
  op.scale = scale
  return op


def _colouring(path, s: 'Source'):
  """Colours of the elements of ``s`` whose images never overlap.

  ``path`` is a chain of convs and elementwise ops from ``s``. Along each
  spatial axis, element ``a`` of ``s`` can only reach output positions in an
  interval ``[lo(a), hi(a)]`` (receptive fields, composed through the convs);
  elements ``a`` and ``a + T`` never meet when ``hi(a) < lo(a + T)``. Elements
  with equal ``(a_1 mod T_1, ..., channel)`` share a colour, so pushing the
  sum of one colour's generators gives every output coordinate the single
  generator that reaches it, and ``sum_colours |image|`` is exactly
  ``sum_elements |image|``.

  Returns an int array ``colour[*s.shape]`` and the number of colours, or
  ``None`` if the chain is not of that form or colouring does not pay.
  """
  convs = [op.conv for op, _ in path if op.conv is not None]
  if not convs or any(op.conv is None and not op.elementwise
                      for op, _ in path):
    return None
  spec = convs[0].lhs_spec
  if any(c.lhs_spec != spec or c.out_spec != spec for c in convs):
    return None
  if s.shape[spec[0]] != 1:
    return None
  spatial = spec[2:]
  periods = []
  for d, axis in enumerate(spatial):
    size = s.shape[axis]
    lo = np.arange(size)
    hi = np.arange(size)
    for c in convs:
      k_eff = (c.k.shape[d] - 1) * c.rhs_dilation[d] + 1
      st, pad = c.strides[d], c.padding[d][0]
      n_in = c.in_shape[c.lhs_spec[2 + d]]
      n_out = (n_in + c.padding[d][0] + c.padding[d][1] - k_eff) // st + 1
      lo = np.clip(-(-(lo + pad - k_eff + 1) // st), 0, n_out - 1)
      hi = np.clip((hi + pad) // st, 0, n_out - 1)
    period = size
    for t in range(1, size):
      if np.all(hi[:-t] < lo[t:]):
        period = t
        break
    periods.append(period)
  channels = s.shape[spec[1]]
  n_colours = int(np.prod(periods)) * channels
  if n_colours >= s.size:
    return None
  grids = np.meshgrid(*[np.arange(n) for n in s.shape], indexing='ij')
  colour = grids[spec[1]].copy()
  mult = channels
  for d, axis in enumerate(spatial):
    colour = colour + mult * (grids[axis] % periods[d])
    mult *= periods[d]
  return colour, n_colours


class Graph:
  """Holds the symbol blocks of one propagation and answers bound queries.

  Args:
    strategy: ``'auto'`` (abs shortcut, colouring, cheapest of forward /
      backward),
      ``'forward'`` (materialised generators everywhere, the textbook
      DeepZ order) or ``'backward'`` (adjoint everywhere). All give the same
      numbers up to float rounding; the last two exist for testing.
    max_block_elems: memory cap (array elements, per example) of forward
      generators: a block whose generators would exceed it is pulled
      backward instead.
    row_block_elems: target size (elements, per example) of one backward row
      block ``rows * widest node``; pulls with more rows are split into
      balanced row blocks run one after another by ``lax.map`` (small blocks
      keep the memory-bound passes in cache).
    axis_name: name of the ``vmap`` axis over points when the propagation
      runs vmapped with one (lets the windowed order pool sparse columns of
      all points of a chunk, see ``windowed``); ``None`` otherwise.
    hoisted: ``('collect', store)`` or ``('use', store)``: values that depend
      on the parameters only (see :meth:`param_only`) are computed by a
      first, ``'collect'`` propagation of one point outside the loop over
      chunks and read from ``store`` by the ones inside it, so XLA does not
      recompute them for every chunk. ``None``: computed in place.
  """

  def __init__(self, strategy: str = 'auto', max_block_elems: int = 1 << 24,
               row_block_elems: int = 1 << 22, axis_name: Optional[str] = None,
               hoisted: Optional[tuple] = None):
    if strategy not in ('auto', 'forward', 'backward'):
      raise ValueError(f'unknown strategy {strategy!r}')
    self.strategy = strategy
    self.max_block_elems = int(max_block_elems)
    self.row_block_elems = int(min(row_block_elems, max_block_elems))
    self.axis_name = axis_name
    self.sources: List[Source] = []
    self._radius: Dict[int, jax.Array] = {}
    self._fwd: Dict[tuple, jax.Array] = {}
    self._keep = []   # keeps nodes alive so id() keys stay unique
    self._local_rows: Dict[tuple, list] = {}  # (chain top, block) -> rows
    self._hoisted = hoisted
    self._n_param_only = 0

  # -- construction ---------------------------------------------------------

  def param_only(self, fn: Callable[[], jax.Array]) -> jax.Array:
    """``fn()``, a value of the parameters alone, hoisted when possible.

    Calls are numbered in order; propagations of the same network make the
    same calls, so the number identifies the value across them.
    """
    key = self._n_param_only
    self._n_param_only += 1
    if self._hoisted is None:
      return fn()
    mode, store = self._hoisted
    if mode == 'use' and key in store:
      return store[key]
    value = fn()
    if mode == 'collect':
      store[key] = value
    return value

  def new_source(self, beta, sparse: bool = False) -> Source:
    s = Source(beta, len(self.sources), sparse)
    self.sources.append(s)
    return s

  # -- graph walks ----------------------------------------------------------

  @staticmethod
  def _subgraph(node, targets) -> List:
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

  @staticmethod
  def _chain(node, s: Source):
    """``[(op, input position)]`` from ``s`` to ``node`` if a single path."""
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

  def _abs_chain(self, node, s: Source):
    """Ops from ``s`` to ``node`` if ``|L_s| beta_s`` can be formed exactly."""
    path = self._chain(node, s)
    if path is None or any(op.abs_fn is None for op, _ in path):
      return None
    seen_mixing = False
    for op, _ in path:
      if op.mono == BOTH:
        continue
      if seen_mixing:            # after the pivot only row-monomial ops
        if op.mono != ROW:
          return None
      else:
        seen_mixing = True       # first non-'both' op is the pivot
    return path

  def _apply_abs_chain(self, path, s: Source):
    r = s.beta
    for op, k in path:
      radii = [jnp.zeros(i.shape, i.dtype) for i in op.inputs]
      radii[k] = r
      r = op.abs_fn(*radii)
    return r

  # -- forward --------------------------------------------------------------

  def forward(self, node, s: Source):
    """Generators of ``node`` w.r.t. block ``s``: ``[s.size, *node.shape]``."""
    if s.index not in node.sources:
      return None
    key = (id(node), s.index)
    if key in self._fwd:
      return self._fwd[key]
    if node is s:
      g = jnp.diag(s.beta.reshape(-1)).reshape((s.size,) + s.shape)
    else:
      ins = [self.forward(i, s) for i in node.inputs]
      if node.is_sum:
        present = [g for g in ins if g is not None]
        g = sum(present[1:], present[0])
      else:
        ins = [g if g is not None else
               jnp.zeros((s.size,) + i.shape, i.dtype)
               for g, i in zip(ins, node.inputs)]
        g = jax.vmap(node.fn)(*ins)
    self._fwd[key] = g
    self._keep.append(node)
    return g

  def _forward_cost(self, node, s: Source) -> float:
    cost, seen, stack = 0.0, set(), [node]
    while stack:
      n = stack.pop()
      if id(n) in seen or s.index not in n.sources:
        continue
      seen.add(id(n))
      if (id(n), s.index) in self._fwd:
        continue
      cost += n.cost
      stack.extend(n.inputs)
    return s.size * cost

  def _forward_elems(self, node, s: Source) -> int:
    biggest = max((n.size for n in self._subgraph(node, frozenset([s.index]))),
                  default=0)
    return s.size * biggest

  # -- backward -------------------------------------------------------------

  def _pull(self, start, rows, targets: frozenset) -> Dict[int, jax.Array]:
    """Cotangents at every block in ``targets`` for ``rows[n, *start.shape]``."""
    cts = {id(start): rows}
    out = {}
    for n in self._subgraph(start, targets):
      ct = cts.pop(id(n), None)
      if ct is None:
        continue
      if isinstance(n, Source):
        out[n.index] = ct
        continue
      for i, c in zip(n.inputs, n.transpose(ct)):
        if not (i.sources & targets):
          continue
        cts[id(i)] = c if id(i) not in cts else cts[id(i)] + c
    return out

  @staticmethod
  def _explicit_start(node, targets) -> bool:
    """Whether the pull can start below ``node`` with its explicit Jacobian."""
    return (isinstance(node, Op) and node.explicit_rows is not None
            and len(node.inputs) == 1 and bool(node.inputs[0].sources & targets))

  def _start(self, node, targets):
    """(start node, rows_fn(idx) -> rows[len(idx), *start.shape]).

    ``idx`` is ``None`` for all rows at once (no gather).
    """
    if self._explicit_start(node, targets):
      rows_all = node.explicit_rows()
      return node.inputs[0], (lambda idx: rows_all if idx is None
                              else rows_all[idx])

    def identity_rows(idx):
      if idx is None:
        return jnp.eye(node.size, dtype=node.dtype).reshape(
            (node.size,) + node.shape)
      return jax.nn.one_hot(idx, node.size, dtype=node.dtype).reshape(
          (idx.shape[0],) + node.shape)
    return node, identity_rows

  def _backward_cost(self, node, targets) -> float:
    cost = sum(n.cost for n in self._subgraph(node, targets))
    if self._explicit_start(node, targets):
      cost -= node.cost
    return node.size * max(cost, 1.0)

  def _row_block(self, node, targets) -> int:
    widest = max((n.size for n in self._subgraph(node, targets)), default=1)
    return int(max(1, min(node.size, self.row_block_elems // max(widest, 1))))

  def backward_radius(self, node, targets: frozenset):
    """``sum_{s in targets} |J_s| beta_s`` by pulling unit rows back."""
    n = node.size
    start, rows_fn = self._start(node, targets)
    blocks = [s for s in self.sources if s.index in targets]

    def block(idx):
      rows = rows_fn(idx)
      cts = self._pull(start, rows, targets)
      total = jnp.zeros((rows.shape[0],), node.dtype)
      for s in blocks:
        if s.index in cts:
          ct = cts[s.index].reshape(rows.shape[0], -1)
          total = total + abs_dot(ct, s.beta.reshape(-1))
      return total

    rb = self._row_block(node, targets)
    if rb >= n:
      r = block(None)
    else:
      nb = -(-n // rb)
      rb = -(-n // nb)            # balanced blocks: at most nb - 1 padded rows
      idx = jnp.minimum(jnp.arange(nb * rb), n - 1).reshape(nb, rb)
      r = jax.lax.map(block, idx).reshape(-1)[:n]
    return r.reshape(node.shape)

  # -- queries --------------------------------------------------------------

  def radius(self, node):
    """Per-coordinate radius ``sum_j |L_j| beta_j`` of a lazy value."""
    key = id(node)
    if key in self._radius:
      return self._radius[key]
    if isinstance(node, Source):
      r = node.beta
    else:
      r = jnp.zeros(node.shape, node.dtype)
      remaining = []
      for s in self.sources:
        if s.index not in node.sources:
          continue
        path = self._abs_chain(node, s) if self.strategy == 'auto' else None
        if path is not None:
          r = r + self._apply_abs_chain(path, s)
        else:
          remaining.append(s)
      if remaining:
        r = r + self._radius_of_blocks(node, remaining)
    self._radius[key] = r
    self._keep.append(node)
    return r

  def _coloured_radius(self, path, s: Source, colour, n_colours):
    """``sum_i |L e_i| beta_i`` from one forward pass per colour."""
    onehot = jax.nn.one_hot(jnp.asarray(colour.reshape(-1)), n_colours,
                            dtype=s.dtype).T                 # [colours, size]
    g = (onehot * s.beta.reshape(1, -1)).reshape((n_colours,) + s.shape)
    for op, k in path:
      if op.is_sum:
        continue
      args = [None] * len(op.inputs)
      args[k] = g
      axes = [0 if a is not None else None for a in args]
      fill = [a if a is not None else jnp.zeros(i.shape, i.dtype)
              for a, i in zip(args, op.inputs)]
      if all(a is not None for a in args):
        g = jax.vmap(op.fn)(*fill)
      else:
        g = jax.vmap(op.fn, in_axes=axes)(*fill)
    return jnp.sum(jnp.abs(g), axis=0)

  def _radius_of_blocks(self, node, blocks):
    if self.strategy == 'auto':
      rest = []
      r = jnp.zeros(node.shape, node.dtype)
      targets = frozenset(s.index for s in blocks)
      bwd_all = self._backward_cost(node, targets)
      wplan = windowed.plan(node, blocks)
      if (wplan is not None and wplan.flops < bwd_all and
          wplan.elems <= self.max_block_elems):
        rows = {s.index: self._local_rows[(id(wplan.top), s.index)]
                for s in blocks if (id(wplan.top), s.index) in self._local_rows}
        return windowed.radius(wplan, self.axis_name, rows, self.param_only)
      local = self._local_plan(node, blocks, bwd_all)
      if local is not None:
        return self._local_radius(node, local, targets)
      for s in blocks:
        path = self._chain(node, s)
        col = _colouring(path, s) if path is not None else None
        if col is not None and col[1] * max(
            op.size for op, _ in path) > self.max_block_elems:
          col = None                       # would not fit the memory cap
        if col is not None:
          cost = col[1] * sum(op.cost for op, _ in path)
          if cost < min(self._forward_cost(node, s), bwd_all):
            r = r + self._coloured_radius(path, s, *col)
            continue
        rest.append(s)
      if not rest:
        return r
      return r + self._radius_of_blocks_plain(node, rest)
    return self._radius_of_blocks_plain(node, blocks)

  def _colour_cost(self, node, s):
    path = self._chain(node, s)
    col = _colouring(path, s) if path is not None else None
    if col is None or col[1] * max(op.size for op, _ in path) > self.max_block_elems:
      return None
    return col[1] * sum(op.cost for op, _ in path)

  def _local_plan(self, node, blocks, bwd_all):
    """Levels of a local (patch) pull if it is the cheapest order, else None."""
    levels = local_chain.chain_of(node, frozenset(s.index for s in blocks))
    if levels is None:
      return None
    others = 0.0
    for s in blocks:
      c = self._colour_cost(node, s)
      f = self._forward_cost(node, s)
      others += f if c is None else min(c, f)
    if local_chain.cost(levels) * CONV_COST_FACTOR >= min(bwd_all, others):
      return None
    return levels

  def _local_radius(self, node, levels, targets):
    """Radius through a conv chain by the local pull.

    When every row's window fits the memory budget at once, the rows are
    kept (a dense layer above the chain reuses them, see ``windowed``).
    """
    out = levels[0].conv.out_shape
    if local_chain.rows_size(levels, targets) > self.max_block_elems:
      return local_chain.local_radius(levels, targets,
                                      self._local_row_block(levels))
    # The barrier keeps XLA:CPU from re-running the rows' GEMMs inside the
    # reduction below (it fused them into one slow loop).
    rows = local_chain.local_rows(levels, targets)
    kept = jax.lax.optimization_barrier(
        {k: [f[:2] for f in v] for k, v in rows.items()})
    rows = {k: [a + f[2:] for a, f in zip(kept[k], v)] for k, v in rows.items()}
    for index, v in rows.items():
      self._local_rows[(id(node), index)] = v
    self._keep.append(node)
    r = sum(local_chain.rows_radius(*f) for pairs in rows.values()
            for f in pairs)
    return r.reshape(out)

  def _local_row_block(self, levels) -> int:
    """Output positions per block: window cotangents of ``row_block_elems``."""
    _, sizes = local_chain._geometry(levels)  # pylint: disable=protected-access
    c_out = levels[0].conv.out_shape[3]
    widest = max(sizes[i + 1][0] * sizes[i + 1][1] * lv.conv.k.shape[2]
                 for i, lv in enumerate(levels))
    return int(max(1, self.row_block_elems // max(1, c_out * widest)))

  def _radius_of_blocks_plain(self, node, blocks):
    targets = frozenset(s.index for s in blocks)
    if self.strategy == 'forward':
      use_forward = True
    elif self.strategy == 'backward':
      use_forward = False
    else:
      fwd = sum(self._forward_cost(node, s) for s in blocks)
      bwd = self._backward_cost(node, targets)
      fits = all(self._forward_elems(node, s) <= self.max_block_elems
                 for s in blocks)
      use_forward = fits and fwd <= bwd
    if use_forward:
      r = jnp.zeros(node.shape, node.dtype)
      for s in blocks:
        r = r + jnp.sum(jnp.abs(self.forward(node, s)), axis=0)
      return r
    return self.backward_radius(node, targets)

  def coefficients(self, node) -> List[Optional[jax.Array]]:
    """Generators of ``node`` per block: ``[s.size, *node.shape]`` or None.

    Formed by pulling the ``node.size`` unit rows back (``'auto'`` and
    ``'backward'``) or from forward generators (``'forward'``).
    """
    if self.strategy == 'forward':
      return [self.forward(node, s) for s in self.sources]
    targets = node.sources
    start, rows_fn = self._start(node, targets)
    cts = self._pull(start, rows_fn(None), targets)
    out = []
    for s in self.sources:
      if s.index not in cts:
        out.append(None)
        continue
      g = cts[s.index].reshape(node.size, s.size) * s.beta.reshape(1, -1)
      out.append(g.T.reshape((s.size,) + node.shape))
    return out


def abs_dot(ct, beta):
  """``|ct| @ beta`` for ``ct[n, k]`` and ``beta[k] >= 0``.

  Written as ``sum(|ct * beta|)``: XLA:CPU fuses ``abs`` into a dot as a
  scalar loop (~2 GB/s), while the multiply-abs-reduce fusion streams at
  memory speed (6x faster on the MNIST CNN's pulls).
  """
  return jnp.sum(jnp.abs(ct * beta), axis=-1)


def conv_cost(out_size: int, kernel_fan_in: int) -> float:
  return 2.0 * out_size * kernel_fan_in * CONV_COST_FACTOR


def dot_cost(out_size: int, contracted: int) -> float:
  return 2.0 * out_size * contracted

