"""Radii of a dense layer fed by a conv chain, by windowed forward products.

Setting: a dense layer ``y = W x`` (``W[n_out, n_in]``) whose input ``x`` is,
up to a reshape, ``lam * z`` with ``z`` the output of a chain of convolutions
(``lam``: a ReLU layer's slopes, or any elementwise scale). A symbol block
``s`` on the chain (the input box, the fresh symbols of an earlier ReLU
layer) reaches ``z`` through a local Jacobian ``L_s``: its element ``j``
reaches only the outputs whose receptive field contains ``j``. The radius of
output ``r`` is ``rad_r = sum_j |(W diag(lam) L_s)[r, j]| beta_j``.

The backward order pulls all ``n_out`` rows of ``W`` back through every conv
of the chain. Here the product is formed forward, in blocks:

* along each spatial axis the chain has a total stride ``S`` at the level of
  ``s``, so a block of ``S`` consecutive positions of ``s`` (offset chosen
  to minimise the count) reaches a fixed window of ``n_win`` output
  positions. With ``n_win x n_win`` windows of ``C_out`` channels (``K``
  rows) and ``S x S x C_in`` block elements (``N`` columns),
  ``(W diag(lam) L_s)[:, block] = W[:, window] @ (lam L_s)[window, block]``:
  one ``[n_out, K] x [K, N]`` product per block, with ``W[:, window]`` shared
  by every point of a chunk (one GEMM per block for the whole chunk under
  ``vmap``);
* ``(lam L_s)[window, block]`` is cut (static slices; for sparse blocks, a
  gather of the kept columns) from the rows that the local (patch) pull of
  ``local_chain`` gives every chain output on its window;
* every element of ``s`` lies in exactly one block, so summing
  ``|product| * beta`` over all blocks' columns is exactly ``rad``.

For the MNIST CNN of Zizzo et al. (2021, App. D) and its 1568 -> 1000 layer:
the input box forms 49 blocks of 4 x 4 pixels, each reaching 3 x 3 positions
x 32 channels (``K = 288``): 0.45 GFLOP per point, in GEMMs, where the
backward order spends about 0.9 GFLOP in thin transposed convolutions.

Kept columns: most columns of a block are often zero. A ReLU layer's fresh
symbols exist only at crossing neurons (at eps = 0.02 about 110 of the MNIST
CNN's 3136 first-layer neurons), and an input pixel whose paths all end at
inactive neurons reaches nothing (about half of them at eps = 0.02). The
columns of every point of the chunk (``vmap`` with a named axis; see
``axis_name``) are pooled per block; the ones that may be non-zero (``beta >
0`` for ReLU symbols; any non-zero entry for the input box) are compacted (a
cumulative count and a scatter), and each block runs its GEMM at the
smallest of a few widths that holds them (``lax.switch`` per block inside
the scan over blocks; off the CPU one width, the fullest block's, for all
blocks, since a GPU waits on the host for every switch index). The GEMMs'
FLOPs then follow the non-zero columns, not the layer width; the numbers
are the same whichever width runs.
"""
import contextlib
from typing import Any, Callable, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax.certification import conv_ops
from fl_jax.certification import local_chain
from fl_jax.certification import nodes as nd
from fl_jax.certification import tuning
from fl_jax.certification.conv_ops import EXACT

_WIDTH_HOOKS: List[Callable] = []


class BlockGemms(NamedTuple):
  """The block GEMMs one windowed radius ran (what :func:`report_block_widths` hooks get).

  Block ``b`` ran ``[n_out, k_dim] x [k_dim, widths[picked[b]]]`` (width 0:
  nothing); a width below ``full`` also ran the ``[W, n_pts]`` product that
  gives each column back to its point.
  """
  n_out: int
  k_dim: int
  n_pts: int
  full: int
  widths: tuple
  picked: np.ndarray


@contextlib.contextmanager
def report_block_widths(hook: Callable[[BlockGemms], Any]):
  """Calls ``hook(BlockGemms)`` with the widths the block GEMMs ran at.

  The windowed order's work depends on the data (each block's width is
  picked at run time), so a count from the program alone is a range; a
  benchmark counts what ran from these reports (``benchmarks/flop_count.py``).
  Radii traced inside this context report when they run; only those pooled
  over a named ``vmap`` axis (the chunk loop of ``certify``) do, so a
  one-point propagation outside it is not reported.
  """
  _WIDTH_HOOKS.append(hook)
  try:
    yield hook
  finally:
    _WIDTH_HOOKS.remove(hook)
_PERMUTATIONS = ('reshape', 'transpose', 'squeeze', 'expand_dims')


class _Axis(NamedTuple):
  """Block geometry along one spatial axis (all static ints).

  Block ``b`` covers source positions ``b * stride + offset + [0, stride)``
  and reaches chain outputs ``o = lo + b + j``, ``j < n_win``; source
  position ``b * stride + offset + i`` sits at offset ``shift + i - j *
  stride`` of the window of output ``lo + b + j``.
  """
  size: int        # source positions
  out: int         # chain output positions
  window: int      # window size at the source's level
  stride: int      # total stride of the chain at the source's level
  offset: int
  n_blocks: int
  lo: int
  n_win: int
  shift: int

  def out_pad(self):
    """Zero output positions (before, after) holding every block's window."""
    return (max(0, -self.lo),
            max(0, self.lo + self.n_blocks + self.n_win - 1 - self.out))


class _SourcePlan(NamedTuple):
  source: object
  axes: tuple      # (_Axis, _Axis)
  c_in: int
  shape: tuple     # (nb, K, N)
  columns: Optional[np.ndarray]   # sparse sources: [nb, N, K] index of each
                                  # block column's entries in the source's
                                  # flat local rows (-1: zero)


class Plan(NamedTuple):
  node: object
  top: object           # the chain's output node
  levels: list
  scales: list
  sources: List[_SourcePlan]
  flops: float          # GEMM FLOPs per point with every column kept
  elems: int            # largest array per point (local rows, blocks)
  dense_at: Optional[np.ndarray]   # dense input position of each chain
                                   # element, NHWC order (None: identity)
  spec: tuple           # the chain's layout (batch, feature, spatial...)


def _walk_to_chain(node, targets):
  """(permutation ops, scales, chain top) between a dense op and its chain."""
  if not isinstance(node, nd.DenseOp):
    return None
  perms, scales = [], []
  x = node.inputs[0]
  while True:
    if isinstance(x, nd.Source):          # no conv chain below
      return None
    if isinstance(x, nd.ConvOp):
      return perms, scales, x
    if isinstance(x, nd.SumOp):
      rest = [i for i in x.inputs if not isinstance(i, nd.Source)]
      srcs = [i for i in x.inputs if isinstance(i, nd.Source)]
      if len(rest) != 1 or any(s.index in targets for s in srcs):
        return None
      x = rest[0]
    elif isinstance(x, nd.ScaleOp):
      scales.append(x.scale)
      x = x.inputs[0]
    elif (isinstance(x, nd.PrimOp) and x.prim_name in _PERMUTATIONS
          and not scales and len(x.inputs) == 1
          and x.size == x.inputs[0].size):
      perms.append(x)
      x = x.inputs[0]
    else:
      return None


def _axis_blocks(size, out_size, stride, pad, window) -> _Axis:
  """The block offset along one axis with the fewest outputs per block."""
  best = None
  for a in range(-(stride - 1), 1):
    lo = -((-(a + pad - window + 1)) // stride)
    n_win = (a + stride - 1 + pad) // stride - lo + 1
    n_blocks = -(-(size - a) // stride)
    ax = _Axis(size, out_size, window, stride, a, n_blocks, lo, n_win,
               a + pad - lo * stride)
    if best is None or (n_win, n_blocks) < (best.n_win, best.n_blocks):
      best = ax
  return best


def _source_plan(s, level_i, levels, geometry):
  origins, sizes = geometry
  _, oh_n, ow_n, c_out = levels[0].conv.out_nhwc
  _, h, w, c_in = levels[level_i].conv.in_nhwc
  perm = conv_ops.nhwc_perm(levels[level_i].conv.lhs_spec)
  if len(s.shape) != 4 or tuple(s.shape[d] for d in perm) != (1, h, w, c_in):
    return None
  strides = np.ones(2, np.int64)
  for lv in levels[:level_i + 1]:
    strides *= np.asarray(lv.conv.strides)
  org = origins[level_i + 1]
  pads = (-int(org[0][0]), -int(org[1][0]))
  axes = tuple(_axis_blocks(n, o, int(st), p, win) for n, o, st, p, win in
               zip((h, w), (oh_n, ow_n), strides, pads, sizes[level_i + 1]))
  nb = axes[0].n_blocks * axes[1].n_blocks
  k_dim = axes[0].n_win * axes[1].n_win * c_out
  n_dim = axes[0].stride * axes[1].stride * c_in
  columns = None
  if s.sparse:
    columns = _column_index(axes, c_out, c_in, (oh_n, ow_n),
                            sizes[level_i + 1])
  return _SourcePlan(s, axes, c_in, (nb, k_dim, n_dim), columns)


def _column_index(axes, c_out, c_in, out_hw, window):
  """``[nb, N, K]``: flat local-row index of every block entry (-1: zero)."""
  ah, aw = axes
  (oh_n, ow_n), (wh, ww) = out_hw, window
  bh, bw, ih, iw, ci, jh, jw, c = np.ix_(
      np.arange(ah.n_blocks), np.arange(aw.n_blocks), np.arange(ah.stride),
      np.arange(aw.stride), np.arange(c_in), np.arange(ah.n_win),
      np.arange(aw.n_win), np.arange(c_out))
  o_h, o_w = ah.lo + bh + jh, aw.lo + bw + jw
  off_h = ah.shift + ih - jh * ah.stride
  off_w = aw.shift + iw - jw * aw.stride
  ok = ((o_h >= 0) & (o_h < oh_n) & (o_w >= 0) & (o_w < ow_n) & (off_h >= 0)
        & (off_h < wh) & (off_w >= 0) & (off_w < ww))
  flat = (((((o_h * ow_n + o_w) * c_out + c) * wh + off_h) * ww + off_w)
          * c_in + ci)
  full = np.broadcast_arrays(np.where(ok, flat, -1), bh, bw, ih, iw, ci, jh,
                             jw, c)[0]
  nb = ah.n_blocks * aw.n_blocks
  return full.reshape(nb, ah.stride * aw.stride * c_in, -1).astype(np.int32)


def plan(node, blocks) -> Optional[Plan]:
  """A windowed plan for the radius of dense ``node`` over ``blocks``.

  ``None`` when ``node`` is not a dense product over (reshapes of scaled)
  conv-chain outputs carrying every block in ``blocks``.
  """
  targets = frozenset(s.index for s in blocks)
  walk = _walk_to_chain(node, targets)
  if walk is None:
    return None
  perms, scales, top = walk
  levels = local_chain.chain_of(top, targets)
  if levels is None:
    return None
  chain_size = int(np.prod(top.shape))
  spec = top.conv.out_spec
  # Which chain-output element (NHWC order, whatever the chain's layout) each
  # dense input reads (exact: the ops between are permutations, applied to
  # an iota).
  with jax.ensure_compile_time_eval():
    v = jnp.arange(chain_size, dtype=jnp.float32).reshape(top.conv.out_nhwc)
    v = local_chain.from_nhwc(v, spec)
    for op in reversed(perms):
      v = op.fn(v)
    chain_at = np.asarray(v).reshape(-1).astype(np.int64)
  if sorted(chain_at.tolist()) != list(range(chain_size)):
    return None
  geometry = local_chain._geometry(levels)  # pylint: disable=protected-access
  n_out = node.size
  sources, flops = [], 0.0
  for i, level in enumerate(levels):
    for s, _ in level.sources:
      if s.index not in targets:
        continue
      sp = _source_plan(s, i, levels, geometry)
      if sp is None:
        return None
      sources.append(sp)
      nb, k_dim, n_dim = sp.shape
      flops += 2.0 * nb * n_out * k_dim * n_dim
  if {sp.source.index for sp in sources} != set(targets):
    return None
  identity = bool(np.all(chain_at == np.arange(chain_size)))
  elems = max([local_chain.rows_size(levels, targets)]
              + [int(np.prod(sp.shape)) for sp in sources])
  return Plan(node, top, levels, scales, sources, flops, elems,
              None if identity else np.argsort(chain_at), spec)


def _block_matrix(rows, sp: _SourcePlan):
  """``(lam L_s)[window(b), block(b)]`` for every block and point.

  ``rows[Oh, Ow, C_out, wh, ww, C_in, P]`` (local rows times radii and
  scales, the points of the chunk last so every copy below moves contiguous
  runs of ``P`` values). Returns ``[nb, K, N * P]``. Built from static
  slices, no gather: for window slot ``(jh, jw)`` the blocks' outputs are
  the positions ``lo + b + j`` and their elements the window offsets
  ``shift - j * stride + [0, stride)``; the slots are stacked inside the
  block axis.
  """
  ah, aw = sp.axes
  pads = [(0, 0)] * rows.ndim
  starts = []
  for ax, pos_axis, win_axis in ((ah, 0, 3), (aw, 1, 4)):
    w_lo = ax.shift - (ax.n_win - 1) * ax.stride
    w_hi = ax.shift + ax.stride
    pads[pos_axis] = ax.out_pad()
    pads[win_axis] = (max(0, -w_lo), max(0, w_hi - ax.window))
    starts.append((pads[pos_axis][0], max(0, -w_lo)))
  xp = jnp.pad(rows, pads)
  pieces = []
  for jh in range(ah.n_win):
    for jw in range(aw.n_win):
      lo = [0] * rows.ndim
      size = list(xp.shape)
      lo[0], size[0] = starts[0][0] + ah.lo + jh, ah.n_blocks
      lo[1], size[1] = starts[1][0] + aw.lo + jw, aw.n_blocks
      lo[3], size[3] = starts[0][1] + ah.shift - jh * ah.stride, ah.stride
      lo[4], size[4] = starts[1][1] + aw.shift - jw * aw.stride, aw.stride
      pieces.append(jax.lax.slice(xp, lo, [a + b for a, b in zip(lo, size)]))
  x = jnp.stack(pieces, axis=2)        # [nb_h, nb_w, slots, C, S_h, S_w, ...]
  nb, k_dim, n_dim = sp.shape
  return x.reshape(nb, k_dim, n_dim * rows.shape[-1])


def _block_mask(beta, sp: _SourcePlan):
  """``beta[block(b)] > 0`` for every block: ``[nb, N]``."""
  ah, aw = sp.axes
  b = beta.reshape(ah.size, aw.size, sp.c_in)
  b = jnp.pad(b, ((-ah.offset, ah.n_blocks * ah.stride + ah.offset - ah.size),
                  (-aw.offset, aw.n_blocks * aw.stride + aw.offset - aw.size),
                  (0, 0)))
  b = b.reshape(ah.n_blocks, ah.stride, aw.n_blocks, aw.stride, sp.c_in)
  return jnp.transpose(b, (0, 2, 1, 3, 4)).reshape(sp.shape[0], -1) > 0


def _padded_weights(wc, sp: _SourcePlan):
  """``W`` on the chain's padded output grid: ``[n_out, Hp, Wp * C]``.

  ``wc[n_out, Oh, Ow, C]``; zero rows where a window leaves the map. A
  block's window is then ``n_win`` consecutive rows of ``n_win * C``
  consecutive entries (:func:`_window`).
  """
  ah, aw = sp.axes
  wp = jnp.pad(wc, ((0, 0), ah.out_pad(), aw.out_pad(), (0, 0)))
  return wp.reshape(wp.shape[0], wp.shape[1], -1)


def _window(wp, sp: _SourcePlan, b):
  """``W[:, window(b)]`` of block ``b`` (traced int): ``[n_out, K]``.

  One dynamic slice of :func:`_padded_weights`, in the order (window row,
  window column, channel) of the block columns.
  """
  ah, aw = sp.axes
  c = wp.shape[2] // (aw.n_blocks + aw.n_win - 1)
  h0 = b // aw.n_blocks + ah.lo + ah.out_pad()[0]
  w0 = b % aw.n_blocks + aw.lo + aw.out_pad()[0]
  win = jax.lax.dynamic_slice(wp, (0, h0, w0 * c),
                              (wp.shape[0], ah.n_win, aw.n_win * c))
  return win.reshape(wp.shape[0], -1)


def _compact(mask, width):
  """First ``width`` marked columns per row of ``mask[nb, M]``: ``[nb, W]``.

  Unused slots hold ``M``. A cumulative count and a scatter (no sort).
  """
  nb, m = mask.shape
  pos = jnp.cumsum(mask, axis=1) - 1
  pos = jnp.where(mask & (pos < width), pos, width)
  table = jnp.full((nb, width + 1), m, jnp.int32)
  table = table.at[jnp.arange(nb)[:, None], pos].set(
      jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (nb, m)), mode='drop')
  return table[:, :width]


def _widths(full: int, per_block: bool = True):
  """Widths the kept columns are padded to.

  Per block: 0 (nothing kept), multiples of ``min_width`` growing by about
  ``width_growth`` (``tuning``), and ``full`` (every column, no gather).
  One width for all blocks: 0 and ``full / 2^k`` for ``k < global_widths`` (fewer
  branches, each a whole scan over the blocks, to keep compiles short).
  """
  knobs = tuning.get()
  if not per_block:
    return sorted({0} | {-(-full // (1 << k))
                         for k in range(knobs.global_widths)})
  out, wd = [0], knobs.min_width
  while wd < full:
    out.append(wd)
    wd = (-(-int(np.ceil(wd * knobs.width_growth)) // knobs.min_width)
          * knobs.min_width)
  out.append(full)
  return out


def _block_radius(weight, mask, n_pts, fetch, data, widths=None,
                  report=False, per_block=True):
  """``sum_b |W_b @ X_b|`` summed per point over each block's kept columns.

  Args:
    weight: ``b -> W_b``, ``[n_out, K]``, for a traced block index ``b``.
    mask: ``[nb, M]`` (bool): the columns of ``X_b`` that may be non-zero;
      column ``m`` belongs to point ``m % n_pts`` (points last).
    n_pts: points ``P`` pooled in the columns.
    fetch: ``(data_b, sel) -> [K, len(sel)]``: block ``b``'s columns
      ``sel`` (``sel == M``: a padding slot, any finite values), or all
      ``M`` columns for ``sel=None``.
    data: pytree with a leading block axis, scanned with the blocks.
    widths: see :func:`_widths` (default ``_widths(M, per_block)``).
    report: send the picked widths to the hooks of
      :func:`report_block_widths`, if any.
    per_block: pick the width block by block (a ``lax.switch`` in every
      step of the scan over blocks); ``False``: one width, the fullest
      block's, for all (one switch around the scan). On a GPU every switch
      waits for its index on the host, so per-block picks cost more there
      than the FLOPs they save.

  Returns:
    ``[n_out, P]``. Each block runs one ``[n_out, K] x [K, w]`` GEMM at the
    smallest width ``w`` that holds its kept columns, so the FLOPs follow
    the kept columns; dropped columns are zero and add nothing, so every
    width gives the same sum.
  """
  nb, m = mask.shape
  w_shape = jax.eval_shape(weight, 0)
  (n_out, k_dim), dtype = w_shape.shape, w_shape.dtype
  widths = _widths(m, per_block) if widths is None else widths
  sel = _compact(mask, m)                                      # [nb, M]
  count = jnp.sum(mask, axis=1)
  pick = jnp.sum(jnp.asarray(widths)[None, :] < count[:, None], axis=1)

  def branch(wd):
    # The weights are sliced inside the branch, where XLA can fuse the slice
    # into the GEMM (an operand of the switch would be copied out first).
    def run(b, db, sb):
      if wd == 0:
        return jnp.zeros((n_out, n_pts), dtype)
      if wd == m:                    # every column, in order: no gather
        out = jnp.dot(weight(b), fetch(db, None), precision=EXACT)
        return jnp.sum(jnp.abs(out).reshape(n_out, m // n_pts, n_pts), 1)
      s = sb[:wd]
      out = jnp.dot(weight(b), fetch(db, s), precision=EXACT)  # [n_out, W]
      owner = jax.nn.one_hot(s % n_pts, n_pts, dtype=dtype)
      owner = owner * (s < m)[:, None].astype(dtype)
      return jnp.dot(jnp.abs(out), owner, precision=EXACT)
    return run

  branches = [branch(wd) for wd in widths]
  if not per_block:
    pick = jnp.broadcast_to(jnp.max(pick), pick.shape)
  if report and _WIDTH_HOOKS:
    hooks, geometry = tuple(_WIDTH_HOOKS), (n_out, k_dim, n_pts, m, tuple(widths))
    jax.debug.callback(
        lambda p: [h(BlockGemms(*geometry, np.asarray(p))) for h in hooks], pick)
  acc0 = jnp.zeros((n_out, n_pts), dtype)
  xs = (jnp.arange(nb), data, sel)
  if per_block:
    def body(acc, xs_b):
      *args, pb = xs_b
      return acc + jax.lax.switch(pb, branches, *args), None
    return jax.lax.scan(body, acc0, xs + (pick,))[0]

  def scan_at(run):
    return lambda xs: jax.lax.scan(lambda acc, a: (acc + run(*a), None),
                                   acc0, xs)[0]
  return jax.lax.switch(pick[0], [scan_at(run) for run in branches], xs)


def radius(p: Plan, axis_name: Optional[str] = None, rows=None,
           per_block: Optional[bool] = None):
  """``sum_{s in plan} |W diag(lam) L_s| beta_s`` at the dense output.

  Args:
    p: from :func:`plan`.
    axis_name: name of the ``vmap`` axis over points, if any: sparse blocks
      then pool the columns of all points of the chunk. ``None``: this point
      alone (correct under any transform; without the name, an outer
      ``vmap`` turns the width switch into a select over every width).
    rows: ``{block index: local rows}`` (``local_chain.local_rows``, as
      factors) already formed for the chain's own bounds; the others are
      formed here.
    per_block: pick GEMM widths block by block (see :func:`_block_radius`);
      default: on the CPU only.

  Returns:
    Radius in the dense op's output shape.
  """
  node = p.node
  n_out = node.size
  dtype = node.dtype
  chain_shape = p.levels[0].conv.out_nhwc             # [1, Oh, Ow, C]
  if per_block is None:
    per_block = tuning.get().per_block_widths

  def wc():
    w2d = node.rows().reshape(n_out, -1)
    if p.dense_at is not None:
      w2d = jnp.take(w2d, jnp.asarray(p.dense_at), axis=1)
    return w2d.reshape((n_out,) + tuple(chain_shape[1:]))
  scale = jnp.ones(chain_shape, dtype)
  for sc in p.scales:
    scale = scale * local_chain.to_nhwc(sc, p.spec)
  rows = dict(rows or {})
  missing = frozenset(sp.source.index for sp in p.sources) - set(rows)
  if missing:
    rows.update(local_chain.local_rows(p.levels, missing))

  def gather(v):     # [P, ...] over the chunk's points
    return v[None] if axis_name is None else jax.lax.all_gather(v, axis_name)
  total = jnp.zeros((n_out,), dtype)
  me = 0 if axis_name is None else jax.lax.axis_index(axis_name)
  scales = gather(scale)                              # [P, 1, Oh, Ow, C]
  n_pts = scales.shape[0]
  for sp in p.sources:
    pairs = rows[sp.source.index]   # [(ct[Oh Ow, C, wh, ww, Cin], beta_w, top)]
    wp = _padded_weights(wc(), sp)
    weight = lambda b, sp=sp, wp=wp: _window(wp, sp, b)      # [n_out, K]
    if sp.columns is None:
      # Every block's columns by static slices; keep the non-zero ones (the
      # input box: pixels whose paths all end at inactive neurons drop out).
      r = sum(ct * bw[:, None] for ct, bw, _ in pairs)
      r = r * scale.reshape(-1, chain_shape[3])[:, :, None, None, None]
      rg = gather(r.reshape(tuple(chain_shape[1:]) + r.shape[2:]))
      cols = _block_matrix(jnp.moveaxis(rg, 0, -1), sp)  # [nb, K, N P]
      mask = jnp.any(cols != 0, axis=1)
      m = mask.shape[1]

      def fetch(cb, s, m=m):
        return cb if s is None else jnp.take(cb, jnp.minimum(s, m - 1), 1)
      data = cols
    else:
      # Only the columns with beta > 0 (crossing ReLUs), gathered: each entry
      # is a product of gathered factors (window row, radius, scale), so the
      # rows are never formed for every window.
      ct0, bw0, _ = pairs[0]
      n_pos, c_out, win = ct0.shape[0], ct0.shape[1], bw0[0].size
      # A top-level source's rows are the kernel alone: not gathered (that
      # would copy them for every point), and indexed without the point.
      factors = [(ct.reshape(-1) if top else gather(ct).reshape(-1),
                  gather(bw).reshape(-1), not top) for ct, bw, top in pairs]
      sg = scales.reshape(-1)                           # [P * Oh Ow C]
      mask = gather(_block_mask(
          local_chain.to_nhwc(sp.source.beta, p.spec), sp))  # [P, nb, N]
      mask = jnp.transpose(mask, (1, 2, 0)).reshape(mask.shape[1], -1)
      m = mask.shape[1]

      def fetch(cb, s, factors=factors, sg=sg, m=m, n_pos=n_pos, c_out=c_out,
                win=win):
        s = jnp.arange(m) if s is None else s
        idx = cb[jnp.minimum(s // n_pts, cb.shape[0] - 1)].T     # [K, W]
        ok = (idx >= 0) & (s < m)[None, :]
        pt = s % n_pts
        idx = jnp.where(ok, idx, 0)
        oc, w = idx // win, idx % win           # (position, channel), window
        at_bw = (oc // c_out + pt * n_pos) * win + w
        at_ct = idx + pt * (n_pos * c_out * win)
        vals = sum(ctg[at_ct if per_point else idx] * bwg[at_bw]
                   for ctg, bwg, per_point in factors)
        vals = vals * sg[oc + pt * (n_pos * c_out)]
        return jnp.where(ok, vals, 0)
      data = jnp.asarray(sp.columns)
    acc = _block_radius(weight, mask, n_pts, fetch, data,
                        report=axis_name is not None, per_block=per_block)
    total = total + acc[:, me]
  return total.reshape(node.shape)
