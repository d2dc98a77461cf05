"""Radii through chains of convolutions by local (patch) pulls.

A neuron after a chain of convolutions and elementwise scalings depends only
on a window of each earlier layer: its receptive field. So the row of the
chain's Jacobian that belongs to an output neuron ``(p, c)`` is non-zero only
on a window whose size does not grow with the image. Pulling every output
row back *as a window* costs, per row, one small transposed convolution per
layer on the window (the same kernel for every row), instead of a transposed
convolution over the whole image (backward order) or one forward pass per
generator colour (colouring). For the CIFAR CNN of Zizzo et al. (2021,
App. D) this is about 10x fewer FLOPs than either for the third and fourth
conv layers' bounds.

Shapes (one example, batch axis of size 1 as the interpreter keeps it;
any layout, as long as every conv of the chain reads and writes the same
one: windows, scales and radii are moved to NHWC here, see ``to_nhwc``):
a chain is ``source_0 -> conv_1 -> [sum with source_1] -> diag ->
conv_2 -> ... -> conv_L`` (``diag``: a ReLU slope or any elementwise
scaling; ``sum``: adding a ReLU layer's fresh symbols). A window at level
``l`` is ``[w_l, w_l, C_l]`` with ``w_{l-1} = (w_l - 1) s_l + k_l`` (VALID
conv on the window); output position ``o`` has window origin
``o_{l-1} = o_l s_l - pad_l`` (may be negative: padding, where every scale
and radius is zero). The radius of output neuron ``r`` is
``sum_l sum_window |ct_l[r]| * beta_l[window]`` over the sources on the
chain, exactly ``sum_j |L_{r j}| beta_j``.
"""
from typing import List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax.certification import conv_ops
from fl_jax.certification import nodes as nd
from fl_jax.certification import tuning
from fl_jax.certification.conv_ops import EXACT

NHWC = (0, 3, 1, 2)


def to_nhwc(arr, spec):
  """``arr`` in layout ``spec`` (batch, feature, spatial...) -> NHWC."""
  return jnp.transpose(arr, conv_ops.nhwc_perm(spec))


def from_nhwc(arr, spec):
  """The inverse of :func:`to_nhwc`."""
  return jnp.transpose(arr, tuple(np.argsort(conv_ops.nhwc_perm(spec))))


class Level:
  """One conv of the chain, walked from the output back to the input."""

  def __init__(self, conv, below):
    self.conv = conv          # conv_ops.Conv (NHWC, 2-D, no dilation)
    self.scales = []          # diag scales at the conv's *input* level
    self.sources = []         # Sources summed in at the conv's input level
    self.below = below        # the node feeding this level (after scales/sums)


def _is_plain_conv(node) -> bool:
  """A 2-D conv node, one layout in and out, no dilation, batch of one."""
  if not isinstance(node, nd.ConvOp):
    return False
  conv = node.conv
  return (conv.n_sp == 2 and conv.lhs_spec == conv.out_spec
          and all(d == 1 for d in conv.rhs_dilation)
          and len(conv.in_shape) == 4 and conv.in_shape[conv.lhs_spec[0]] == 1)


def chain_of(node, targets) -> Optional[List[Level]]:
  """The conv chain below ``node`` if every target block lies on it.

  Returns the levels from the output down, or ``None`` when ``node`` is not
  the output of such a chain or a target block is not summed in along it.
  """
  if not _is_plain_conv(node):
    return None
  levels = []
  cur = node
  found = set()
  while True:
    level = Level(cur.conv, None)
    levels.append(level)
    x = cur.inputs[0]
    # Below a conv: elementwise scalings and sums with sources, in any order,
    # until the next conv or a lone source.
    while True:
      if isinstance(x, nd.Source):
        level.sources.append(x)
        found.add(x.index)
        x = None
        break
      if isinstance(x, nd.ConvOp):
        break
      if isinstance(x, nd.SumOp):
        rest = [i for i in x.inputs if not isinstance(i, nd.Source)]
        srcs = [i for i in x.inputs if isinstance(i, nd.Source)]
        if len(rest) > 1:
          return None
        # Sources added *below* a scale are scaled by it: keep them with the
        # scales collected so far (applied to the cotangent before them).
        for s in srcs:
          level.sources.append((s, len(level.scales)))
          found.add(s.index)
        if not rest:
          x = None
          break
        x = rest[0]
        continue
      if not isinstance(x, nd.ScaleOp):
        return None
      level.scales.append(x.scale)
      x = x.inputs[0]
    if x is None:
      break
    if (not _is_plain_conv(x) or x.conv.lhs_spec != level.conv.lhs_spec
        or tuple(x.conv.out_shape) != tuple(level.conv.in_shape)):
      return None
    cur = x
  if not set(targets) <= found:
    return None
  # Normalise: plain Source entries (a lone source) come after all scales.
  for level in levels:
    level.sources = [s if isinstance(s, tuple) else (s, len(level.scales))
                     for s in level.sources]
  return levels


def _geometry(levels):
  """Window sizes and origins per level (numpy, static)."""
  out_h, out_w = levels[0].conv.out_nhwc[1:3]
  oh, ow = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing='ij')
  origins = [(oh.reshape(-1), ow.reshape(-1))]   # at the output level
  sizes = [(1, 1)]
  for level in levels:
    c = level.conv
    (kh, kw), (sh, sw) = c.k.shape[:2], c.strides
    (ph, _), (pw, _) = c.padding
    h0, w0 = origins[-1]
    origins.append((h0 * sh - ph, w0 * sw - pw))
    sizes.append(((sizes[-1][0] - 1) * sh + kh, (sizes[-1][1] - 1) * sw + kw))
  return origins, sizes


def cost(levels) -> float:
  """FLOPs of the local pull (planner estimate)."""
  _, sizes = _geometry(levels)
  out = levels[0].conv.out_nhwc
  rows = out[1] * out[2] * out[3]
  total = 0.0
  for i, level in enumerate(levels):
    c = level.conv
    wh, ww = sizes[i]
    total += 2.0 * wh * ww * c.k.shape[3] * int(np.prod(c.k.shape[:3]))
  return rows * total


def rows_size(levels, targets) -> int:
  """Elements of :func:`local_rows` for ``targets`` (one example)."""
  _, sizes = _geometry(levels)
  out = levels[0].conv.out_nhwc
  return sum(out[1] * out[2] * out[3] * sizes[i + 1][0] * sizes[i + 1][1]
             * lv.conv.in_nhwc[3] for i, lv in enumerate(levels)
             for s, _ in lv.sources if s.index in targets)


def row_widths(levels):
  """``(C_out, widest window cotangent per row)`` of a local pull."""
  _, sizes = _geometry(levels)
  c_out = levels[0].conv.out_nhwc[3]
  widest = max(sizes[i + 1][0] * sizes[i + 1][1] * lv.conv.k.shape[2]
               for i, lv in enumerate(levels))
  return c_out, widest


def from_rows(r, levels):
  """A ``[P, C_out]`` radius (row-major positions) in the chain's layout."""
  spec = levels[0].conv.out_spec
  return from_nhwc(r.reshape(levels[0].conv.out_nhwc), spec)


def _windows(arr, origin, size):
  """``arr[0, oh + i, ow + j, :]`` for every output position; zeros outside.

  Returns ``[P, size_h, size_w, C]``.
  """
  _, h, w, _ = arr.shape
  oh, ow = origin
  sh, sw = size
  lo_h, lo_w = max(0, -int(oh.min())), max(0, -int(ow.min()))
  hi_h = max(0, int(oh.max()) + sh - h)
  hi_w = max(0, int(ow.max()) + sw - w)
  pad = jnp.pad(arr[0], ((lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  ih = (oh + lo_h)[:, None] + np.arange(sh)[None, :]          # [P, sh]
  iw = (ow + lo_w)[:, None] + np.arange(sw)[None, :]          # [P, sw]
  return pad[ih[:, :, None], iw[:, None, :]]                    # [P, sh, sw, C]


def _prepare(levels, targets):
  """Static per-level data of a local pull: window convs, scales, sources."""
  origins, sizes = _geometry(levels)
  local_convs, per_level = [], []
  knobs = tuning.get()
  spec = levels[0].conv.lhs_spec
  for i, level in enumerate(levels):
    c = level.conv
    size_in = sizes[i + 1]
    local = conv_ops.Conv(c.k, c.strides, ((0, 0), (0, 0)), (1, 1), NHWC,
                          NHWC, (1,) + size_in + (c.k.shape[2],))
    # Windows are small: their transposed convs run as one GEMM with the
    # window's Jacobian when that costs at most ``local_dense_ratio`` times the
    # conv's FLOPs (XLA:CPU runs the strided transposes of such tiny maps
    # as a chain of pads and adds).
    fan_in = int(np.prod(c.k.shape[:-1]))
    if (local.in_size <= knobs.local_dense_ratio * fan_in
        and local.in_size * local.out_size <= knobs.dense_max_elems):
      local.dense = True
    local_convs.append(local)
    scales = [_windows(to_nhwc(s, spec), origins[i + 1], size_in)
              for s in level.scales]
    betas = [(s, _windows(to_nhwc(s.beta, spec), origins[i + 1], size_in), at)
             for s, at in level.sources if s.index in targets]
    per_level.append((scales, betas))
  return local_convs, per_level


def _walk(levels, prepared, pos, visit):
  """Pulls the rows of every channel at output positions ``pos`` back.

  Calls ``visit(source, ct, beta_window, top)`` for every target source on
  the chain: the rows on the source's window are ``ct * beta_window[:, None]``
  with ``ct[b, C_out, wh, ww, C_in]`` (``b = len(pos)``) and
  ``beta_window[b, wh, ww, C_in]`` (the radii times the scales between the
  source and the level's conv); ``top``: the source feeds the chain's top
  conv, so ``ct`` is that conv's kernel alone (it depends on no input).
  """
  local_convs, per_level = prepared
  c_out = levels[0].conv.out_nhwc[3]
  dtype = levels[0].conv.k.dtype
  b = pos.shape[0]
  # One-hot rows for every channel of these positions: [b * C, 1, 1, 1, C].
  ct = jnp.broadcast_to(jnp.eye(c_out, dtype=dtype)[None],
                        (b, c_out, c_out)).reshape(b * c_out, 1, 1, 1, c_out)
  for i in range(len(levels)):
    ct = local_convs[i].transpose(ct)                  # [b*C, 1, wh, ww, Cin]
    scales, betas = per_level[i]
    ct = ct[:, 0].reshape((b, c_out) + ct.shape[2:])  # [b, C, wh, ww, Cin]
    # The scales of this level multiply every channel's window alike: they
    # are kept as one window factor and handed over with the radii, so the
    # top level's rows stay the kernel alone (no per-point copy per channel).
    factor = None
    for j in range(len(scales) + 1):
      for s, beta_w, at in betas:
        if at == j:
          bw = beta_w[pos]
          visit(s, ct, bw if factor is None else bw * factor, i == 0)
      if j < len(scales):
        sc = scales[j][pos]
        factor = sc if factor is None else factor * sc
    if factor is not None:
      ct = ct * factor[:, None]
    ct = ct.reshape((b * c_out, 1) + ct.shape[2:])


def local_rows(levels, targets):
  """Rows of the chain's Jacobian on their windows, times the radii, as factors.

  Returns ``{source index: [(ct, beta_w, top), ...]}`` for every target
  source: its rows are ``sum_i ct_i * beta_w_i[:, None]``, where ``ct[o, c]``
  is ``L[(o, c), window(o)]`` (``ct[P, C_out, wh, ww, C_in]``, ``P`` the
  output positions in row-major order, the window of ``o`` at the source's
  level as in :func:`_geometry`) and ``beta_w[P, wh, ww, C_in]`` the radii
  (times the scales between the source and its conv) on the windows, zero
  where a window leaves the map. ``top``: the source feeds the chain's top
  conv, and ``ct`` is its kernel alone, the same for every input point. The
  product is left to the consumer: for such a source it would be a copy of
  ``P * C_out`` windows per point.
  """
  prepared = _prepare(levels, targets)
  out_shape = levels[0].conv.out_nhwc
  pos = jnp.arange(out_shape[1] * out_shape[2])
  rows = {}

  def visit(s, ct, beta_w, top):
    rows.setdefault(s.index, []).append((ct, beta_w, top))
  _walk(levels, prepared, pos, visit)
  return rows


def rows_radius(ct, bw, top):
  """``sum_window |ct * bw|`` of local rows in factors: ``[P, C_out]``.

  ``ct[P, C_out, wh, ww, C_in]``, ``bw[P, wh, ww, C_in]`` (see
  :func:`local_rows`). ``bw`` may be negative (a scale between a source
  and its conv). A top-level ``ct`` (the kernel alone) makes
  this a GEMM per position, ``|ct[o]| @ |bw[o]|``, with the points of a
  chunk as its columns under ``vmap``; otherwise a streamed
  multiply-abs-reduce.
  """
  n_pos, c_out = ct.shape[:2]
  if top:
    return jnp.einsum('ocw,ow->oc', jnp.abs(ct).reshape(n_pos, c_out, -1),
                      jnp.abs(bw).reshape(n_pos, -1), precision=EXACT)
  # The barrier keeps the window flat: XLA:CPU otherwise folds the reshape
  # into a reduce over (wh, ww, C_in), which it runs ~15x slower.
  ct, bw = jax.lax.optimization_barrier(
      (ct.reshape(n_pos, c_out, -1), bw.reshape(n_pos, 1, -1)))
  return jnp.sum(jnp.abs(ct * bw), -1)


def local_radius(levels, targets, row_block: int):
  """``sum_{s in targets} |L_s| beta_s`` for every output neuron.

  Args:
    levels: from :func:`chain_of`.
    targets: indices of the blocks to include (all on the chain).
    row_block: output positions per block (``lax.map`` over blocks keeps
      the window cotangents small).

  Returns:
    The radius at the chain's output, in its layout.
  """
  out_shape = levels[0].conv.out_nhwc
  n_pos, c_out = out_shape[1] * out_shape[2], out_shape[3]
  dtype = levels[0].conv.k.dtype
  prepared = _prepare(levels, targets)

  def block(pos):
    total = [jnp.zeros((pos.shape[0], c_out), dtype)]

    def visit(s, ct, beta_w, top):
      del s
      total[0] = total[0] + rows_radius(ct, beta_w, top)
    _walk(levels, prepared, pos, visit)
    return total[0].reshape(-1)

  nb = -(-n_pos // row_block)
  rb = -(-n_pos // nb)
  idx = jnp.minimum(jnp.arange(nb * rb), n_pos - 1).reshape(nb, rb)
  if nb == 1:
    r = block(idx[0])
  else:
    r = jax.lax.map(block, idx).reshape(-1)
  return from_rows(r.reshape(nb * rb, c_out)[:n_pos], levels)
