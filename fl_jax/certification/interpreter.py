"""Runs a model's own jaxpr on abstract values (zonotopes or boxes).

``apply(params, x)`` is traced once with ``jax.make_jaxpr`` on one example;
each equation is then evaluated on a mix of concrete values (anything computed
from the parameters and constants only, e.g. reshaped kernels) and abstract
values (anything depending on ``x``). Concrete equations run as they are;
abstract ones go through a transformer:

* linear / affine primitives (dense, conv, add / sub / neg, mul / div by a
  concrete value, reshape, broadcast, transpose, squeeze, expand_dims,
  slice, pad, concatenate, select_n with a concrete predicate, gather /
  dynamic_slice with concrete indices, reduce_sum, average pooling,
  convert_element_type, copy, stop_gradient): exact. The two im2col forms of
  a conv -- ``conv_general_dilated_patches`` (a conv with a constant one-hot
  kernel) or strided slices of a padded input, concatenated -- followed by a
  dense product are recognised and fused into one conv;
* ``max(x, c)`` (ReLU is ``max(x, 0)`` inside ``jax.nn.relu``'s
  ``custom_jvp``): ``c + relu(x - c)`` with the DeepZono relaxation;
  ``max`` / ``min`` of two abstract values and ``abs`` reduce to ReLU;
* ``reduce_window_max`` (max pooling) and ``reduce_max``: exact selection of
  the input whose lower bound dominates all other upper bounds, else the box
  ``[max l, max u]`` with one fresh symbol per output;
* call-like primitives (``jit``, ``closed_call``, ``custom_jvp_call``,
  ``custom_vjp_call``, ``remat``): the body is interpreted in place.

Anything else applied to an abstract value raises ``NotImplementedError``
naming the primitive (it is never skipped), and so does a product of two
abstract values (``x * x``), which no affine domain can represent.
"""
import itertools
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from fl_jax.certification import conv_ops
from fl_jax.certification import linear_graph as lg
from fl_jax.certification import nodes as nd
from fl_jax.certification.domains import relu_relaxation

LIN, PARAM = 'lin', 'param'

_CALL_KEYS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')


class LazyZono:
  """A zonotope value inside a propagation: ``center + L(e)``, ``L`` lazy."""

  def __init__(self, center, node):
    self.center = center
    self.node = node


class Box:
  """An interval value inside a propagation: ``center +- radius``."""

  def __init__(self, center, radius):
    self.center = center
    self.radius = radius


def is_abstract(v) -> bool:
  return isinstance(v, (LazyZono, Box))


def _is_static(v) -> bool:
  return not is_abstract(v) and not isinstance(v, jax.core.Tracer)


def unsupported(name: str, why: str = ''):
  msg = (f"certification: primitive '{name}' applied to an input-dependent "
         'value is not supported')
  return NotImplementedError(msg + (f' ({why})' if why else '') + '.')


# --- primitive tables --------------------------------------------------------

# Operand roles of linear primitives: LIN = the output is linear in it
# (jointly with the other LIN operands), PARAM = a fixed coefficient.
_UNARY_LINEAR = {
    'neg', 'reshape', 'broadcast_in_dim', 'transpose', 'squeeze',
    'expand_dims', 'rev', 'slice', 'reduce_sum', 'convert_element_type',
    'reduce_window_sum', 'cumsum', 'real', 'copy', 'copy_p'}
_JOINT_LINEAR = {'add', 'sub', 'add_any', 'concatenate', 'pad'}
_BILINEAR = {'mul', 'dot_general', 'conv_general_dilated'}
# Operand index -> role for the remaining ones.
_SPECIAL_ROLES = {
    'div': (LIN, PARAM),
    'select_n': None,             # predicate PARAM, cases LIN
    'dynamic_slice': None,        # operand LIN, indices PARAM
    'dynamic_update_slice': None,  # operand, update LIN, indices PARAM
    'gather': (LIN, PARAM),
    'scatter-add': (LIN, PARAM, LIN),
    'scatter_add': (LIN, PARAM, LIN),
}
# Ops whose matrix has at most one non-zero per row and per column.
_MONO_BOTH = {
    'neg', 'reshape', 'transpose', 'squeeze', 'expand_dims', 'rev', 'slice',
    'convert_element_type', 'copy', 'copy_p', 'real', 'add', 'sub', 'add_any',
    'concatenate', 'pad', 'select_n', 'dynamic_slice', 'dynamic_update_slice'}
_MONO_ROW = {'broadcast_in_dim', 'gather'}
_IDENTITY = {'copy', 'copy_p', 'stop_gradient', 'optimization_barrier'}
_ELEMENTWISE = {'neg', 'mul', 'div', 'convert_element_type', 'add', 'sub',
                'add_any', 'real'}


def _roles(name: str, invals) -> List[str]:
  n = len(invals)
  if name in _UNARY_LINEAR:
    return [LIN] + [PARAM] * (n - 1)
  if name in _JOINT_LINEAR:
    return [LIN] * n
  if name in _BILINEAR:
    abs_idx = [i for i, v in enumerate(invals) if is_abstract(v)]
    if len(abs_idx) > 1:
      raise unsupported(name, 'both operands depend on the input, e.g. x * x;'
                        ' the product of two zonotopes is not affine')
    return [LIN if i in abs_idx else PARAM for i in range(n)]
  if name == 'select_n':
    return [PARAM] + [LIN] * (n - 1)
  if name == 'dynamic_slice':
    return [LIN] + [PARAM] * (n - 1)
  if name == 'dynamic_update_slice':
    return [LIN, LIN] + [PARAM] * (n - 2)
  if name in _SPECIAL_ROLES:
    roles = list(_SPECIAL_ROLES[name])
    return roles + [PARAM] * (n - len(roles))
  raise unsupported(name)


def _zeros_like(v):
  return jnp.zeros(np.shape(v), jnp.result_type(v))


def _linear_parts(prim, params, invals, roles):
  """(center, fn(*lin), abs_fn(*radii), abstract operand indices)."""
  name = prim.name
  for i, (v, r) in enumerate(zip(invals, roles)):
    if is_abstract(v) and r != LIN:
      raise unsupported(name, f'operand {i} must not depend on the input')
  abs_idx = [i for i, v in enumerate(invals) if is_abstract(v)]
  center = prim.bind(*[v.center if is_abstract(v) else v for v in invals],
                     **params)

  def assemble(lin, param_map):
    args = []
    it = iter(lin)
    for i, (v, r) in enumerate(zip(invals, roles)):
      if i in abs_idx:
        args.append(next(it))
      elif r == LIN:
        args.append(_zeros_like(v))
      else:
        args.append(param_map(v))
    return args

  def fn(*lin):
    return prim.bind(*assemble(lin, lambda v: v), **params)

  if name == 'sub':
    def abs_fn(*radii):
      return sum(radii[1:], radii[0])
  elif name == 'neg':
    def abs_fn(r):
      return r
  else:
    absolute = name in _BILINEAR or name == 'div'

    def abs_fn(*radii):
      return prim.bind(*assemble(radii, jnp.abs if absolute else (lambda v: v)),
                       **params)
  return center, fn, abs_fn, abs_idx


def _mono(name: str, invals, abs_idx, out_shape) -> str:
  if name in _MONO_BOTH:
    return nd.BOTH
  if name in _MONO_ROW:
    return nd.ROW
  if name in ('mul', 'div'):
    same = all(np.shape(invals[i].center) == tuple(out_shape) for i in abs_idx)
    return nd.BOTH if same else nd.ROW
  return nd.NONE


def _cost(name: str, params, invals, abs_idx, out_shape) -> float:
  out = float(np.prod(out_shape, dtype=np.int64))
  if name == 'dot_general':
    (lc, _), _ = params['dimension_numbers']
    lhs_shape = np.shape(invals[0].center if is_abstract(invals[0])
                         else invals[0])
    return lg.dot_cost(out, int(np.prod([lhs_shape[d] for d in lc])))
  if name == 'conv_general_dilated':
    rhs = invals[1].center if is_abstract(invals[1]) else invals[1]
    dn = params['dimension_numbers']
    rshape = np.shape(rhs)
    fan_in = int(np.prod([rshape[d] for d in dn.rhs_spec[1:]]))
    return lg.conv_cost(out, fan_in)
  if name == 'reduce_window_sum':
    return out * float(np.prod(params['window_dimensions']))
  if name in ('reduce_sum', 'cumsum'):
    return float(np.prod(np.shape(invals[abs_idx[0]].center)))
  return out


# --- dense-layer Jacobians (backward start without arithmetic) --------------

def _dot_explicit_rows(params, invals, abs_i, out_shape):
  """``rows[n_out, *x.shape]`` of ``dot_general`` in its abstract operand."""
  (lc, rc), (lb, rb) = params['dimension_numbers']
  if lb or rb:
    return None
  x = invals[abs_i].center
  w = invals[1 - abs_i]
  x_con, w_con = (lc, rc) if abs_i == 0 else (rc, lc)
  x_free = [d for d in range(x.ndim) if d not in x_con]
  if any(x.shape[d] != 1 for d in x_free):
    return None
  w_free = [d for d in range(np.ndim(w)) if d not in w_con]
  # Contracted W axes in the order of the matching x axes.
  order = sorted(range(len(x_con)), key=lambda k: x_con[k])
  perm = w_free + [w_con[k] for k in order]
  n_out = int(np.prod(out_shape, dtype=np.int64))

  def rows():
    return jnp.transpose(w, perm).reshape((n_out,) + tuple(x.shape))
  return rows


# --- patches (one-hot conv kernels) -----------------------------------------

def _patch_info(params, rhs):
  """If ``rhs`` is the one-hot kernel of ``conv_general_dilated_patches``.

  Returns ``(channel[o], taps[o, n_spatial])`` mapping each output feature to
  the input channel and kernel tap it copies, else ``None``.
  """
  if not _is_static(rhs) or params.get('batch_group_count', 1) != 1:
    return None
  dn = params['dimension_numbers']
  k = np.transpose(np.asarray(rhs), dn.rhs_spec)        # [O, I, *spatial]
  out_f, in_f = k.shape[:2]
  spatial = k.shape[2:]
  flat = k.reshape(out_f, -1)
  if not (np.all((flat == 0) | (flat == 1)) and np.all(flat.sum(1) == 1)):
    return None
  pos = flat.argmax(1)
  n_sp = int(np.prod(spatial, dtype=np.int64))
  groups = params['feature_group_count']
  channel = (np.arange(out_f) // (out_f // groups)) * in_f + pos // n_sp
  taps = np.stack(np.unravel_index(pos % n_sp, spatial), axis=1)
  return channel, taps, spatial


def _fused_conv(patch_op, params, invals, abs_i):
  """``patches(x) @ W`` as one ``conv_ops.Conv`` of ``x`` (HWIO kernel)."""
  (lc, rc), (lb, rb) = params['dimension_numbers']
  pparams, (channel, taps, spatial), in_channels, in_shape = patch_op.patch
  pdn = pparams['dimension_numbers']
  x = invals[0].center
  w = invals[1]
  feat = pdn.out_spec[1]
  if (abs_i != 0 or lb or rb or tuple(lc) != (feat,) or feat != x.ndim - 1
      or np.ndim(w) != 2 or tuple(rc) != (0,)
      or any(d != 1 for d in pparams['lhs_dilation'])
      or isinstance(pparams['padding'], str)):
    return None
  co = np.shape(w)[1]
  idx = tuple(taps[:, d] for d in range(taps.shape[1])) + (channel,)
  kernel = jnp.zeros(tuple(spatial) + (in_channels, co), w.dtype)
  kernel = kernel.at[idx].add(w)
  return conv_ops.Conv(kernel, pparams['window_strides'], pparams['padding'],
                       pparams['rhs_dilation'], pdn.lhs_spec, pdn.out_spec,
                       in_shape)


def _im2col_conv(cat, params, invals, abs_i):
  """``concatenate([strided slices of pad(x)]) @ W`` as one conv of ``x``.

  This is the im2col form of a convolution (``fl_jax.models`` on CPU):
  slice ``k`` starts at spatial offset ``o_k`` with the conv's stride, the
  slices are concatenated along the feature axis (feature ``k * C + c``), and
  one dense product with ``W[n_taps * C, C_out]`` finishes the conv. The
  kernel is assembled from ``W`` (tap ``o_k - min o``), the padding from the
  ``pad`` below the slices (zero padding: its value only shifts the centre).
  """
  (lc, rc), (lb, rb) = params['dimension_numbers']
  w = invals[1]
  out = invals[0].center
  nd = out.ndim
  axis = cat.prim_params.get('dimension')
  if (abs_i != 0 or lb or rb or np.ndim(w) != 2 or tuple(rc) != (0,)
      or axis != nd - 1 or tuple(lc) != (axis,) or nd < 3):
    return None
  slices = cat.inputs
  if not all(_is_prim(sl, 'slice') for sl in slices):
    return None
  base = slices[0].inputs[0]
  if any(sl.inputs[0] is not base or sl.shape != slices[0].shape
         for sl in slices):
    return None
  sp = list(range(1, nd - 1))
  cin = base.shape[-1]
  starts, strides = [], None
  for sl in slices:
    pp = sl.prim_params
    st = tuple(pp['strides'] or (1,) * nd)
    start, limit = pp['start_indices'], pp['limit_indices']
    if (start[0] or start[-1] or st[0] != 1 or st[-1] != 1
        or limit[0] != base.shape[0] or limit[-1] != cin):
      return None
    if strides is None:
      strides = tuple(st[d] for d in sp)
    elif strides != tuple(st[d] for d in sp):
      return None
    starts.append([start[d] for d in sp])
  offs = np.asarray(starts)
  o_min = offs.min(axis=0)
  taps = offs - o_min
  ksize = tuple(int(t) for t in taps.max(axis=0) + 1)
  if np.shape(w)[0] != len(slices) * cin:
    return None
  if _is_prim(base, 'pad'):
    cfg = base.prim_params['padding_config']
    if (any(c[2] for c in cfg) or any(cfg[d][0] or cfg[d][1]
                                      for d in (0, nd - 1))):
      return None
    lows = [cfg[d][0] for d in sp]
    x_node = base.inputs[0]
  else:
    lows = [0] * len(sp)
    x_node = base
  padding = []
  for k, d in enumerate(sp):
    lo = lows[k] - int(o_min[k])
    n_out = out.shape[d]
    hi = (n_out - 1) * strides[k] + ksize[k] - x_node.shape[d] - lo
    if lo < 0 or hi < 0:
      return None
    padding.append((lo, hi))
  co = np.shape(w)[1]
  tap_idx = tuple(np.repeat(taps[:, k], cin) for k in range(len(sp)))
  chan = np.tile(np.arange(cin), len(slices))
  kernel = jnp.zeros(ksize + (cin, co), w.dtype).at[tap_idx + (chan,)].add(w)
  spec = (0, nd - 1) + tuple(sp)
  return x_node, conv_ops.Conv(kernel, strides, padding, (1,) * len(sp), spec,
                               spec, x_node.shape)


# --- windows for max pooling ----------------------------------------------------

def _window_fn(in_shape, wdims, strides, padding, wdil):
  """``(windows(arr, pad_value) -> [*out_shape, m], out_shape)`` of a window op.

  Built from one pad and one strided slice per tap, so that its transpose
  (in backward pulls and gradients) is pads and adds, not a scatter.
  """
  out_shape = []
  for size, w, st, (lo, hi), d in zip(in_shape, wdims, strides, padding, wdil):
    out_shape.append((size + lo + hi - ((w - 1) * d + 1)) // st + 1)
  out_shape = tuple(out_shape)
  if min(out_shape) < 1:
    raise unsupported('reduce_window_max', 'empty output')
  for size, w, (lo, hi), d in zip(in_shape, wdims, padding, wdil):
    # A window entirely in padding would have no input to take the max of.
    if lo >= size + (w - 1) * d or hi >= size + (w - 1) * d:
      raise unsupported('reduce_window_max', 'a window lies entirely in '
                        'padding')

  def windows(arr, pad_value):
    cfg = [(lo, hi, 0) for lo, hi in padding]
    padded = lax.pad(arr, jnp.asarray(pad_value, arr.dtype), cfg)
    taps = []
    for tap in itertools.product(*[range(w) for w in wdims]):
      start = [t * d for t, d in zip(tap, wdil)]
      limit = [s0 + (n - 1) * st + 1
               for s0, n, st in zip(start, out_shape, strides)]
      taps.append(lax.slice(padded, start, limit, strides))
    return jnp.stack(taps, axis=-1)
  return windows, out_shape


def _reduce_fn(in_shape, axes):
  """``windows(arr, pad) -> [*kept, m]`` for a reduction over ``axes``."""
  keep = [d for d in range(len(in_shape)) if d not in axes]
  out_shape = tuple(in_shape[d] for d in keep)
  m = int(np.prod([in_shape[d] for d in axes], dtype=np.int64))

  def windows(arr, pad_value):
    del pad_value
    return jnp.transpose(arr, keep + list(axes)).reshape(out_shape + (m,))
  return windows, out_shape


def _is_prim(node, name: str) -> bool:
  return isinstance(node, nd.PrimOp) and node.prim_name == name


def _fold_pad(params, node, in_shape):
  """``conv(pad(x))`` as ``conv(x)`` with the pad added to the conv's padding.

  The linear part of a ``pad`` pads with zeros whatever its value (the value
  only shifts the centre), so a pad of the spatial axes alone, without
  interior padding, is folded into the conv exactly (models that pad then
  run a VALID conv, as PyTorch ports do). Returns ``(params, node,
  in_shape)``, unchanged when the pad does not fold.
  """
  if not _is_prim(node, 'pad') or isinstance(params['padding'], str):
    return params, node, in_shape
  cfg = node.prim_params['padding_config']
  spec = params['dimension_numbers'].lhs_spec
  spatial = spec[2:]
  if (any(c[2] for c in cfg) or any(c[0] < 0 or c[1] < 0 for c in cfg)
      or any(cfg[d][0] or cfg[d][1] for d in spec[:2])):
    return params, node, in_shape
  padding = tuple((lo + cfg[d][0], hi + cfg[d][1])
                  for (lo, hi), d in zip(params['padding'], spatial))
  if any(lo < 0 or hi < 0 for lo, hi in padding):
    return params, node, in_shape
  return dict(params, padding=padding), node.inputs[0], node.inputs[0].shape


# --- domains -----------------------------------------------------------------

def _conv_op(conv: conv_ops.Conv, node, name: str) -> nd.ConvOp:
  """A graph node applying ``conv`` (fast forward, transpose and |.|)."""
  out = float(conv.out_size)
  if conv.dense:
    cost = lg.dot_cost(out, conv.in_size)
  else:
    cost = lg.conv_cost(out, int(np.prod(conv.k.shape[:-1])))
  return nd.ConvOp(conv, node, cost, name)


class ZonotopeDomain:
  """Transformers on lazy zonotopes (DeepZono)."""

  def __init__(self, graph: lg.Graph):
    self.graph = graph

  def make_input(self, center, radius):
    return LazyZono(center, self.graph.new_source(radius))

  def bounds(self, v):
    r = self.graph.radius(v.node)
    return v.center - r, v.center + r

  def same_node(self, v, center):
    return LazyZono(center, v.node)

  def linear(self, prim, params, invals, roles):
    """Exact image under a primitive linear in its abstract operands.

    Convolutions (``lax.conv_general_dilated`` with a concrete kernel, the
    one-hot kernel of ``conv_general_dilated_patches`` followed by a dense
    product, or strided-slice im2col followed by a dense product) become one
    ``conv_ops.Conv`` node; a dense product records its weight so a backward
    pull can start below it for free; anything else is a generic node.
    """
    name = prim.name
    center, fn, abs_fn, abs_idx = _linear_parts(prim, params, invals, roles)
    nodes = [invals[i].node for i in abs_idx]
    out_shape = np.shape(center)
    cost = _cost(name, params, invals, abs_idx, out_shape)
    if name == 'conv_general_dilated' and abs_idx == [0]:
      in_shape = np.shape(invals[0].center)
      info = _patch_info(params, invals[1])
      if info is not None:
        patch = (params, info, in_shape[params['dimension_numbers'].lhs_spec[1]],
                 in_shape)
        return LazyZono(center, nd.PatchOp(fn, nodes[0], out_shape,
                                           center.dtype, abs_fn=abs_fn,
                                           cost=cost, patch=patch))
      cparams, below, cin_shape = _fold_pad(params, nodes[0], in_shape)
      conv = conv_ops.from_params(cparams, cin_shape, invals[1])
      if conv is not None:
        return LazyZono(center, _conv_op(conv, below, 'conv'))
    if name == 'dot_general' and len(abs_idx) == 1:
      src = nodes[0]
      if isinstance(src, nd.PatchOp):
        conv = _fused_conv(src, params, invals, abs_idx[0])
        if conv is not None and conv.out_shape == tuple(out_shape):
          return LazyZono(center, _conv_op(conv, src.inputs[0],
                                           'conv(patches)'))
      if _is_prim(src, 'concatenate'):
        fused = _im2col_conv(src, params, invals, abs_idx[0])
        if fused is not None and fused[1].out_shape == tuple(out_shape):
          return LazyZono(center, _conv_op(fused[1], fused[0], 'conv(im2col)'))
      explicit = _dot_explicit_rows(params, invals, abs_idx[0], out_shape)
      if explicit is not None:
        return LazyZono(center, nd.DenseOp(
            fn, src, out_shape, center.dtype, abs_fn=abs_fn, cost=cost,
            rows=explicit))
    op = nd.PrimOp(
        fn, nodes, out_shape, center.dtype, abs_fn=abs_fn,
        mono=_mono(name, invals, abs_idx, out_shape), cost=cost,
        prim_name=name, prim_params=params,
        elementwise=(name in _ELEMENTWISE and len(abs_idx) == 1 and
                     np.shape(invals[abs_idx[0]].center) == tuple(out_shape)))
    return LazyZono(center, op)

  def relu(self, v):
    """DeepZono ReLU, factored as ``lambda * (x + (-l / 2) e_new)``.

    ``lambda * (-l / 2) = mu`` for crossing neurons (and the new radius is 0
    elsewhere), so this is exactly ``lambda x + mu e_new``; written this way
    the cotangent reaching the new symbols in a backward pull is the one
    that flows on to ``x``, so the two share one buffer.
    """
    lower, upper = self.bounds(v)
    slope, shift, _ = relu_relaxation(lower, upper)
    cross = (lower < 0) & (upper > 0)
    src = self.graph.new_source(jnp.where(cross, -lower / 2,
                                          jnp.zeros_like(lower)), sparse=True)
    node = nd.diag_node(slope, nd.sum_node([v.node, src]))
    return LazyZono(slope * v.center + shift, node)

  def max_groups(self, v, windows, out_shape):
    """Max over windows: exact selection if one input dominates, else a box.

    Output ``o`` takes input ``j*`` (the window's largest lower bound) exactly,
    keeping its symbols, when ``l_j* >= u_j`` for every other ``j`` of the
    window; otherwise it is the box ``[max_j l_j, max_j u_j]`` with one fresh
    symbol (no correlation kept). Both are sound.
    """
    lower, upper = self.bounds(v)
    lw = windows(lower, -jnp.inf)
    up = windows(upper, -jnp.inf)
    m = lw.shape[-1]
    j = jnp.argmax(lw, axis=-1)
    l_max = jnp.max(lw, axis=-1)
    onehot = jnp.arange(m) == j[..., None]
    u_other = jnp.max(jnp.where(onehot, -jnp.inf, up), axis=-1)
    u_max = jnp.max(up, axis=-1)
    exact = l_max >= u_other
    pick = onehot.astype(lower.dtype)
    c_sel = jnp.sum(pick * windows(v.center, 0.0), axis=-1)
    center = jnp.where(exact, c_sel, (l_max + u_max) / 2)
    beta = jnp.where(exact, 0.0, (u_max - l_max) / 2).astype(center.dtype)
    keep = jnp.where(exact[..., None], pick, 0.0)

    def select(g):
      return jnp.sum(keep * windows(g, 0.0), axis=-1)
    sel_op = nd.Op(select, [v.node], out_shape, center.dtype, abs_fn=select,
                   mono=nd.ROW, name='max_select', cost=float(lw.size))
    src = self.graph.new_source(beta, sparse=True)
    return LazyZono(center, nd.sum_node([sel_op, src]))


class IntervalDomain:
  """Transformers on boxes (interval bound propagation)."""

  def make_input(self, center, radius):
    return Box(center, radius)

  def bounds(self, v):
    return v.center - v.radius, v.center + v.radius

  def same_node(self, v, center):
    return Box(center, v.radius)

  def linear(self, prim, params, invals, roles):
    center, _, abs_fn, abs_idx = _linear_parts(prim, params, invals, roles)
    return Box(center, abs_fn(*[invals[i].radius for i in abs_idx]))

  def relu(self, v):
    lower, upper = self.bounds(v)
    lower, upper = jnp.maximum(lower, 0), jnp.maximum(upper, 0)
    return Box((lower + upper) / 2, (upper - lower) / 2)

  def max_groups(self, v, windows, out_shape):
    lower, upper = self.bounds(v)
    lower = jnp.max(windows(lower, -jnp.inf), axis=-1).reshape(out_shape)
    upper = jnp.max(windows(upper, -jnp.inf), axis=-1).reshape(out_shape)
    return Box((lower + upper) / 2, (upper - lower) / 2)


# --- rules -------------------------------------------------------------------

def _bin(dom, prim, a, b):
  return dom.linear(prim, {}, [a, b], [LIN, LIN])


def _max_rule(dom, a, b):
  """``max(a, b) = b + relu(a - b)`` (exact for boxes when both abstract)."""
  if isinstance(dom, IntervalDomain) and is_abstract(a) and is_abstract(b):
    la, ua = dom.bounds(a)
    lb, ub = dom.bounds(b)
    lower, upper = jnp.maximum(la, lb), jnp.maximum(ua, ub)
    return Box((lower + upper) / 2, (upper - lower) / 2)
  if not is_abstract(a):
    a, b = b, a
  if not is_abstract(b):
    b = jnp.asarray(b, a.center.dtype)
    if b.ndim == 0 and _is_static(b) and float(b) == 0.0:
      return dom.relu(a)
    shifted = dom.same_node(a, a.center - b)
    r = dom.relu(shifted)
    return dom.same_node(r, r.center + b)
  d = _bin(dom, lax.sub_p, a, b)
  return _bin(dom, lax.add_p, dom.relu(d), b)


def _min_rule(dom, a, b):
  """``min(a, b) = -max(-a, -b)``."""
  neg = lambda v: (dom.linear(lax.neg_p, {}, [v], [LIN]) if is_abstract(v)
                   else -jnp.asarray(v))
  return dom.linear(lax.neg_p, {}, [_max_rule(dom, neg(a), neg(b))], [LIN])


def _apply_rule(dom, eqn, invals):
  """Abstract transformer for one equation (at least one abstract input)."""
  prim = eqn.primitive
  name = prim.name
  params = prim.get_bind_params(eqn.params)
  if name in ('dot_general', 'conv_general_dilated'):
    # Bounds must be computed in full float32 whatever the model asked for:
    # TF32 / bf16 passes (the GPU / TPU default) would make them unsound.
    params = dict(params, precision=(conv_ops.EXACT, conv_ops.EXACT))
  if name in _IDENTITY:
    outs = [v for v in invals]
    return outs if prim.multiple_results else outs[0]
  if name in ('add', 'add_any', 'sub') and not all(map(is_abstract, invals)):
    a, b = invals
    if is_abstract(a):     # a + c, a - c: same symbols, shifted centre
      c = prim.bind(a.center, b, **params)
      return dom.same_node(a, c)
    if name != 'sub':      # c + b
      return dom.same_node(b, prim.bind(a, b.center, **params))
  if name == 'convert_element_type':
    new = params['new_dtype']
    if not jnp.issubdtype(new, jnp.floating):
      raise unsupported(name, f'conversion to {new}')
    if new == invals[0].center.dtype:
      return dom.same_node(invals[0], invals[0].center)
  if name == 'integer_pow' and params['y'] == 1:
    return invals[0]
  if name == 'max':
    return _max_rule(dom, *invals)
  if name == 'min':
    return _min_rule(dom, *invals)
  if name == 'abs':        # |x| = 2 relu(x) - x
    x = invals[0]
    r = dom.relu(x)
    two_r = dom.linear(lax.mul_p, {}, [r, jnp.asarray(2.0, x.center.dtype)],
                       [LIN, PARAM])
    return _bin(dom, lax.sub_p, two_r, x)
  if name == 'reduce_window_max':
    if any(d != 1 for d in params['base_dilation']):
      raise unsupported(name, 'base dilation')
    x = invals[0]
    windows, out_shape = _window_fn(
        np.shape(x.center), params['window_dimensions'],
        params['window_strides'], params['padding'],
        params['window_dilation'])
    return dom.max_groups(x, windows, out_shape)
  if name == 'reduce_max':
    x = invals[0]
    windows, out_shape = _reduce_fn(np.shape(x.center), params['axes'])
    return dom.max_groups(x, windows, out_shape)
  if name == 'split':
    x = invals[0]
    outs, start = [], 0
    axis = params['axis']
    for size in params['sizes']:
      lo = [0] * x.center.ndim
      hi = list(x.center.shape)
      lo[axis], hi[axis] = start, start + size
      outs.append(dom.linear(lax.slice_p, dict(start_indices=tuple(lo),
                                                limit_indices=tuple(hi),
                                                strides=None), [x], [LIN]))
      start += size
    return outs
  roles = _roles(name, invals)
  return dom.linear(prim, params, invals, roles)


def _inner(eqn):
  for key in _CALL_KEYS:
    j = eqn.params.get(key)
    if j is None:
      continue
    if isinstance(j, jex_core.ClosedJaxpr):
      return j.jaxpr, j.consts
    if isinstance(j, jex_core.Jaxpr):
      return j, ()
  return None


def eval_jaxpr(dom, jaxpr, consts: Sequence[Any], args: Sequence[Any]):
  """Evaluates ``jaxpr`` on concrete and abstract values in domain ``dom``."""
  env: Dict[Any, Any] = {}

  def read(a):
    if isinstance(a, jex_core.Literal):
      return np.asarray(a.val, a.aval.dtype)
    return env[a]

  for var, val in zip(jaxpr.constvars, consts):
    env[var] = val
  for var, val in zip(jaxpr.invars, args):
    env[var] = val
  for eqn in jaxpr.eqns:
    invals = [read(a) for a in eqn.invars]
    if any(is_abstract(v) for v in invals):
      inner = _inner(eqn)
      if inner is not None:
        outs = eval_jaxpr(dom, inner[0], inner[1], invals)
      else:
        outs = _apply_rule(dom, eqn, invals)
        if not eqn.primitive.multiple_results:
          outs = [outs]
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      if all(_is_static(v) for v in invals):
        with jax.ensure_compile_time_eval():
          outs = eqn.primitive.bind(*invals, **params)
      else:
        outs = eqn.primitive.bind(*invals, **params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for var, val in zip(eqn.outvars, outs):
      env[var] = val
  return [read(a) for a in jaxpr.outvars]
