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

``planner`` holds these orders as objects with one interface and picks the
cheapest that fits the memory budget, from the costs of ``tuning``; this
module holds the graph and the mechanics every order runs on.
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
from typing import Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax.certification import local_chain
from fl_jax.certification import nodes as nd
from fl_jax.certification import planner
from fl_jax.certification import tuning as tuning_lib
from fl_jax.certification import windowed


class Budget(NamedTuple):
  """How one propagation (one point, vmapped over a chunk) may run.

  Attributes:
    strategy: ``'auto'`` or an order's name (``planner.ORDER_NAMES``).
    max_block_elems: memory budget (elements, per point) of any one
      intermediate of a rigid order (forward generators, windowed blocks,
      kept local rows, colours).
    row_block_elems: target elements (per point) of one backward row block.
    axis_name: name of the ``vmap`` axis over the points of a chunk, if
      any (the windowed order then pools a chunk's sparse columns).
    tuning: the backend's ``tuning.Tuning``.
  """
  strategy: str = 'auto'
  max_block_elems: int = 1 << 24
  row_block_elems: int = 1 << 22
  axis_name: Optional[str] = None
  tuning: Optional[tuning_lib.Tuning] = None


def _colouring(path, s: nd.Source):
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
  convs = [op.conv for op, _ in path if isinstance(op, nd.ConvOp)]
  if not convs or any(not isinstance(op, nd.ConvOp) and not op.elementwise
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

  Every query (``radius``) first takes the exact abs shortcut for the
  blocks that allow it (``'auto'`` and every forced order but
  ``'forward'`` / ``'backward'``), then lets ``planner.choose`` pick the
  order for the rest; each decision is appended to ``plans``.

  Args:
    budget: a ``Budget``.
  """

  def __init__(self, budget: Budget = Budget()):
    if budget.strategy not in planner.STRATEGIES:
      raise ValueError(f'strategy must be one of {planner.STRATEGIES}, got '
                       f'{budget.strategy!r}')
    self.strategy = budget.strategy
    self.max_block_elems = int(budget.max_block_elems)
    self.row_block_elems = int(min(budget.row_block_elems,
                                   budget.max_block_elems))
    self.axis_name = budget.axis_name
    self.tuning = budget.tuning or tuning_lib.get()
    self.sources: List[nd.Source] = []
    self.plans: List[planner.QueryPlan] = []
    self._radius: Dict[int, jax.Array] = {}
    self._fwd: Dict[tuple, jax.Array] = {}
    self._keep = []   # keeps nodes alive so id() keys stay unique
    self._local_rows: Dict[tuple, list] = {}  # (chain top, block) -> rows

  def new_source(self, beta, sparse: bool = False) -> nd.Source:
    s = nd.Source(beta, len(self.sources), sparse)
    self.sources.append(s)
    return s

  # -- abs shortcut ---------------------------------------------------------

  @staticmethod
  def _abs_chain(node, s: nd.Source):
    """Ops from ``s`` to ``node`` if ``|L_s| beta_s`` can be formed exactly."""
    path = nd.chain(node, s)
    if path is None or any(op.abs_fn is None for op, _ in path):
      return None
    seen_mixing = False
    for op, _ in path:
      if op.mono == nd.BOTH:
        continue
      if seen_mixing:            # after the pivot only row-monomial ops
        if op.mono != nd.ROW:
          return None
      else:
        seen_mixing = True       # first non-'both' op is the pivot
    return path

  @staticmethod
  def _apply_abs_chain(path, s: nd.Source):
    r = s.beta
    for op, k in path:
      radii = [jnp.zeros(i.shape, i.dtype) for i in op.inputs]
      radii[k] = r
      r = op.abs_fn(*radii)
    return r

  # -- forward --------------------------------------------------------------

  def forward(self, node, s: nd.Source):
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
      if isinstance(node, nd.SumOp):
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

  def forward_cost(self, node, s: nd.Source) -> float:
    """``s.size * (FLOPs of the ops not yet pushed)`` between ``s`` and ``node``."""
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

  def forward_elems(self, node, s: nd.Source) -> int:
    """Elements of the widest forward generators between ``s`` and ``node``."""
    return s.size * self.widest(node, frozenset([s.index]))

  def forward_radius(self, node, blocks):
    r = jnp.zeros(node.shape, node.dtype)
    for s in blocks:
      r = r + jnp.sum(jnp.abs(self.forward(node, s)), axis=0)
    return r

  # -- backward -------------------------------------------------------------

  @staticmethod
  def widest(node, targets) -> int:
    return max((n.size for n in nd.subgraph(node, targets)), default=1)

  def _pull(self, start, rows, targets: frozenset) -> Dict[int, jax.Array]:
    """Cotangents at every block in ``targets`` for ``rows[n, *start.shape]``."""
    cts = {id(start): rows}
    out = {}
    for n in nd.subgraph(start, targets):
      ct = cts.pop(id(n), None)
      if ct is None:
        continue
      if isinstance(n, nd.Source):
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
    return (isinstance(node, nd.DenseOp)
            and bool(node.inputs[0].sources & targets))

  def _start(self, node, targets):
    """(start node, rows_fn(idx) -> rows[len(idx), *start.shape]).

    ``idx`` is ``None`` for all rows at once (no gather).
    """
    if self._explicit_start(node, targets):
      rows_all = node.rows()
      return node.inputs[0], (lambda idx: rows_all if idx is None
                              else rows_all[idx])

    def identity_rows(idx):
      if idx is None:
        return jnp.eye(node.size, dtype=node.dtype).reshape(
            (node.size,) + node.shape)
      return jax.nn.one_hot(idx, node.size, dtype=node.dtype).reshape(
          (idx.shape[0],) + node.shape)
    return node, identity_rows

  def backward_cost(self, node, targets) -> float:
    """``node.size * (FLOPs of the ops between the blocks and node)``."""
    cost = sum(n.cost for n in nd.subgraph(node, targets))
    if self._explicit_start(node, targets):
      cost -= node.cost
    return node.size * max(cost, 1.0)

  def row_block(self, node, targets) -> int:
    """Rows per backward block: ``row_block_elems / widest`` (at least 1)."""
    widest = self.widest(node, targets)
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
          total = total + nd.abs_dot(ct, s.beta.reshape(-1))
      return total

    rb = self.row_block(node, targets)
    if rb >= n:
      r = block(None)
    else:
      nb = -(-n // rb)
      rb = -(-n // nb)            # balanced blocks: at most nb - 1 padded rows
      idx = jnp.minimum(jnp.arange(nb * rb), n - 1).reshape(nb, rb)
      r = jax.lax.map(block, idx).reshape(-1)[:n]
    return r.reshape(node.shape)

  # -- colouring ------------------------------------------------------------

  def colouring(self, node, s: nd.Source):
    """``(path, (colour, n_colours), cost, elements)`` or ``None``."""
    path = nd.chain(node, s)
    col = _colouring(path, s) if path is not None else None
    if col is None:
      return None
    mem = col[1] * max(op.size for op, _ in path)
    if mem > self.max_block_elems:
      return None                          # would not fit the memory cap
    return path, col, col[1] * sum(op.cost for op, _ in path), mem

  def coloured_radius(self, node, s: nd.Source, col):
    """``sum_i |L e_i| beta_i`` from one forward pass per colour."""
    del node
    path, (colour, n_colours) = col[0], col[1]
    onehot = jax.nn.one_hot(jnp.asarray(colour.reshape(-1)), n_colours,
                            dtype=s.dtype).T                 # [colours, size]
    g = (onehot * s.beta.reshape(1, -1)).reshape((n_colours,) + s.shape)
    for op, k in path:
      if isinstance(op, nd.SumOp):
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

  # -- local pull and windowed ---------------------------------------------

  def local_radius(self, node, levels, targets):
    """Radius through a conv chain by the local pull.

    When every row's window fits the memory budget at once, the rows are
    kept (a dense layer above the chain reuses them, see ``windowed``).
    """
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
    return local_chain.from_rows(r, levels)

  def _local_row_block(self, levels) -> int:
    """Output positions per block: window cotangents of ``row_block_elems``."""
    c_out, widest = local_chain.row_widths(levels)
    return int(max(1, self.row_block_elems // max(1, c_out * widest)))

  def windowed_radius(self, p, blocks):
    rows = {s.index: self._local_rows[(id(p.top), s.index)]
            for s in blocks if (id(p.top), s.index) in self._local_rows}
    return windowed.radius(p, self.axis_name, rows,
                           per_block=self.tuning.per_block_widths)

  # -- queries --------------------------------------------------------------

  def radius(self, node):
    """Per-coordinate radius ``sum_j |L_j| beta_j`` of a lazy value."""
    key = id(node)
    if key in self._radius:
      return self._radius[key]
    if isinstance(node, nd.Source):
      r = node.beta
    else:
      r = jnp.zeros(node.shape, node.dtype)
      shortcut = self.strategy not in ('forward', 'backward')
      blocks = [s for s in self.sources if s.index in node.sources]
      remaining = []
      for s in blocks:
        path = self._abs_chain(node, s) if shortcut else None
        if path is not None:
          r = r + self._apply_abs_chain(path, s)
        else:
          remaining.append(s)
      picked, others, forced, offers = None, {}, False, []
      if remaining:
        picked, others, forced, offers = planner.choose(
            self, node, remaining, self.strategy, self.max_block_elems)
        r = r + picked.run()
      self.plans.append(planner.QueryPlan(
          node.name, node.shape, len(blocks), len(blocks) - len(remaining),
          picked and picked.order, picked.cost if picked else 0.0,
          picked.mem if picked else 0, others, forced,
          bool(picked and picked.elastic),
          {c.order: (c.cost, planner.fits(c, self.max_block_elems))
           for c in offers}))
    self._radius[key] = r
    self._keep.append(node)
    return r

  def coefficients(self, node) -> List[Optional[jax.Array]]:
    """Generators of ``node`` per block: ``[s.size, *node.shape]`` or None.

    Formed from forward generators (``'forward'``) or by pulling the
    ``node.size`` unit rows back (every other strategy).
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


def conv_cost(out_size: int, kernel_fan_in: int, tuning=None) -> float:
  """Planner cost of a conv: ``2 * out * fan_in * conv_weight``."""
  tuning = tuning or tuning_lib.get()
  return 2.0 * out_size * kernel_fan_in * tuning.conv_weight


def dot_cost(out_size: int, contracted: int) -> float:
  """Planner cost of a dense product: ``2 * out * contracted``."""
  return 2.0 * out_size * contracted
