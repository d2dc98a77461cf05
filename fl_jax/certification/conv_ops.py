"""Convolutions on many generator images, arranged for XLA:CPU.

The propagation applies a model's convolution to thousands of generator
images (forward) or its transpose to thousands of cotangent rows (backward).
XLA:CPU runs a convolution fast only in the NHWC / HWIO form without input
dilation; the transpose that ``jax.vjp`` produces for a strided conv uses
input (lhs) dilation and a kernel layout that falls off that path (about 5x
slower here). So:

* forward: ``conv_general_dilated`` with the kernel in HWIO and the images
  in NHWC, whatever the model's layout (NCHW images are transposed in and
  out: two cheap copies against a conv off XLA:CPU's fast path);
* transpose of a stride-``s`` conv: one stride-1 conv over the *output*
  grid with ``prod(s)`` phases stacked as output channels, then
  depth-to-space (sub-pixel / space-to-depth form). For a tap ``t`` and
  phase ``a``: input position ``q`` with ``q + pad_lo = s * m + a`` receives
  ``sum_d ct[m - d] K[s * d + a]^T``.

Small convs whose input is not much larger than their fan-in (late layers
of LeNet-5 on small images: 6x6 maps, 5x5 kernels) are instead applied as
one dense ``[in, out]`` matrix (the conv's Jacobian, built once from the
kernel): XLA:CPU rewrites such convs into slow generic loops.

Only ``feature_group_count == batch_group_count == 1`` and no lhs dilation
are handled here; other convs fall back to ``jax.vjp``.
"""
import functools
import itertools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fl_jax.certification import tuning

# Every contraction the certifier emits runs in full float32: the GPU / TPU
# default (TF32 / bf16 passes, ~1e-3 relative error) would make bounds unsound.
EXACT = lax.Precision.HIGHEST


def nhwc_perm(spec: Sequence[int]):
  """Axis order taking layout ``spec`` (batch, feature, spatial...) to NHWC."""
  return (spec[0],) + tuple(spec[2:]) + (spec[1],)


def to_hwio(kernel, rhs_spec: Sequence[int]):
  """Kernel from layout ``rhs_spec`` (O, I, spatial...) to ``[*spatial, I, O]``."""
  return jnp.transpose(kernel, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))


def _dilate(k_hwio, rhs_dilation):
  """Inserts zeros between kernel taps (``rhs_dilation``)."""
  if all(d == 1 for d in rhs_dilation):
    return k_hwio
  n_sp = len(rhs_dilation)
  shape = [(s - 1) * d + 1 for s, d in zip(k_hwio.shape[:n_sp], rhs_dilation)]
  out = jnp.zeros(tuple(shape) + k_hwio.shape[n_sp:], k_hwio.dtype)
  idx = tuple(slice(None, None, d) for d in rhs_dilation)
  return out.at[idx].set(k_hwio)


class Conv:
  """A conv ``x -> conv(x, K)`` with concrete kernel; forward and transpose.

  Args:
    kernel_hwio: ``[*spatial, I, O]`` kernel (concrete, possibly traced).
    window_strides, padding, rhs_dilation: as in ``lax.conv_general_dilated``
      (padding as explicit ``(lo, hi)`` pairs).
    lhs_spec, out_spec: the layout of input and output (batch dim, feature
      dim, spatial dims...), as in ``ConvDimensionNumbers``.
    in_shape: shape of one input example (in ``lhs_spec`` layout).
  """

  def __init__(self, kernel_hwio, window_strides, padding, rhs_dilation,
               lhs_spec, out_spec, in_shape):
    self.k = kernel_hwio
    self.n_sp = kernel_hwio.ndim - 2
    self.strides = tuple(window_strides)
    self.padding = tuple(tuple(p) for p in padding)
    self.rhs_dilation = tuple(rhs_dilation)
    self.lhs_spec = tuple(lhs_spec)
    self.out_spec = tuple(out_spec)
    self.in_shape = tuple(in_shape)
    self.precision = EXACT
    n = self.n_sp
    rhs_spec = (n + 1, n) + tuple(range(n))
    self.dn = lax.ConvDimensionNumbers(self.lhs_spec, rhs_spec, self.out_spec)
    self.in_size = int(np.prod(self.in_shape, dtype=np.int64))
    self._in_perm = nhwc_perm(self.lhs_spec)
    self._out_perm = nhwc_perm(self.out_spec)
    self.in_nhwc = tuple(self.in_shape[d] for d in self._in_perm)
    self.out_shape = tuple(
        jax.eval_shape(self._conv, jax.ShapeDtypeStruct(
            self.in_shape, kernel_hwio.dtype), kernel_hwio).shape)
    self.out_nhwc = tuple(self.out_shape[d] for d in self._out_perm)
    self.out_size = int(np.prod(self.out_shape, dtype=np.int64))
    fan_in = int(np.prod(kernel_hwio.shape[:-1], dtype=np.int64))
    knobs = tuning.get()
    self.dense = (self.in_size <= knobs.dense_fan_in_ratio * fan_in
                  and self.in_size * self.out_size <= knobs.dense_max_elems)
    self._matrix = None

  def _conv(self, x, k):
    """The conv of one example in the model's layout, run in NHWC."""
    n = self.n_sp
    canon = (0, n + 1) + tuple(range(1, n + 1))
    if self.lhs_spec == canon and self.out_spec == canon:
      return lax.conv_general_dilated(
          x, k, self.strides, self.padding, rhs_dilation=self.rhs_dilation,
          dimension_numbers=self.dn, precision=self.precision)
    y = lax.conv_general_dilated(
        jnp.transpose(x, self._in_perm), k, self.strides, self.padding,
        rhs_dilation=self.rhs_dilation, dimension_numbers=_nhwc_dn(n),
        precision=self.precision)
    return jnp.transpose(y, tuple(np.argsort(self._out_perm)))

  def matrix(self):
    """The conv as a dense ``[in_size, out_size]`` matrix (built once)."""
    if self._matrix is None:
      eye = jnp.eye(self.in_size, dtype=self.k.dtype).reshape(
          (self.in_size,) + self.in_shape)
      self._matrix = jax.vmap(lambda e: self._conv(e, self.k))(eye).reshape(
          self.in_size, self.out_size)
    return self._matrix

  def __call__(self, x):
    if self.dense:
      return jnp.matmul(x.reshape(-1), self.matrix(),
                        precision=EXACT).reshape(self.out_shape)
    return self._conv(x, self.k)

  def abs(self, r):
    if self.dense:
      return jnp.matmul(r.reshape(-1), jnp.abs(self.matrix()),
                        precision=EXACT).reshape(self.out_shape)
    return self._conv(r, jnp.abs(self.k))

  def transpose(self, ct):
    """Applies the transposed conv to ``ct[n, *out_shape]``."""
    if self.dense:
      rows = ct.shape[0]
      return jnp.matmul(ct.reshape(rows, -1), self.matrix().T,
                        precision=EXACT).reshape(
          (rows,) + self.in_shape)
    n = self.n_sp
    if (int(np.prod(self.strides)) * self.k.shape[n]
        <= tuning.get().col2im_max_channels):
      return self._transpose_col2im(ct)
    return self._transpose_s2d(ct)

  def _to_nhwc(self, ct):
    """``ct[rows, *out_shape]`` -> ``[rows * batch, *spatial, O]``."""
    n = self.n_sp
    out_perm = (self.out_spec[0],) + tuple(self.out_spec[2:]) + (
        self.out_spec[1],)
    c = jnp.transpose(ct, (0,) + tuple(p + 1 for p in out_perm))
    return c.reshape((ct.shape[0] * c.shape[1],) + c.shape[2:]), c.shape[1]

  def _from_interleaved(self, y, rows, nb):
    """``y[rows * batch, *(s * m), I]`` (index q + pad_lo) -> lhs layout."""
    n = self.n_sp
    ci = y.shape[-1]
    in_sp = [self.in_shape[d] for d in self.lhs_spec[2:]]
    slices = [slice(None)]
    pads = [(0, 0)]
    for dim in range(n):
      lo = self.padding[dim][0]
      if lo < 0:
        raise ValueError('negative padding is not supported')
      avail = y.shape[1 + dim] - lo
      pads.append((0, max(0, in_sp[dim] - avail)))
      slices.append(slice(lo, lo + in_sp[dim]))
    pads.append((0, 0))
    if any(p[1] for p in pads):
      y = jnp.pad(y, pads)
    y = y[tuple(slices) + (slice(None),)]
    y = y.reshape((rows, nb) + tuple(in_sp) + (ci,))
    lhs_perm = (self.lhs_spec[0],) + tuple(self.lhs_spec[2:]) + (
        self.lhs_spec[1],)
    inv = np.argsort(lhs_perm)
    return jnp.transpose(y, (0,) + tuple(int(i) + 1 for i in inv))

  def _transpose_col2im(self, ct):
    """Transpose as one GEMM over output channels plus shifted adds.

    ``cols[p, tap, i] = sum_o ct[p, o] K[tap, i, o]``; tap ``s * d + a`` of
    output position ``p`` lands on input index ``s * (p + d) + a - pad_lo``,
    so summing the ``cols`` shifted by ``d`` gives every phase ``a`` at once.
    Used when the space-to-depth conv would have very few output channels
    (e.g. the first conv of a greyscale model), where XLA's conv is slow.
    """
    n = self.n_sp
    k = _dilate(self.k, self.rhs_dilation)
    k_eff = k.shape[:n]
    ci, co = k.shape[n], k.shape[n + 1]
    s = self.strides
    d_max = [-(-ke // si) - 1 for ke, si in zip(k_eff, s)]
    kp = jnp.pad(k, [(0, (d + 1) * si - ke)
                     for d, si, ke in zip(d_max, s, k_eff)] + [(0, 0)] * 2)
    rows = ct.shape[0]
    c, nb = self._to_nhwc(ct)
    out_sp = c.shape[1:1 + n]
    cols = jnp.matmul(c, kp.reshape(-1, co).T,
                      precision=EXACT)              # [R, *P, taps * I]
    shape = [c.shape[0]] + list(out_sp)
    for d, si in zip(d_max, s):
      shape += [d + 1, si]
    cols = cols.reshape(tuple(shape) + (ci,))
    acc = 0
    for dvec in itertools.product(*[range(d + 1) for d in d_max]):
      idx = [slice(None)] * (1 + n)
      for d in dvec:
        idx += [d, slice(None)]
      part = cols[tuple(idx)]                        # [R, *P, *s, I]
      acc = acc + jnp.pad(part, [(0, 0)] + [
          (d, dm - d) for d, dm in zip(dvec, d_max)] + [(0, 0)] * (n + 1))
    m = acc.shape[1:1 + n]
    inter = [0]
    for dim in range(n):
      inter += [1 + dim, 1 + n + dim]
    y = jnp.transpose(acc, tuple(inter) + (2 * n + 1,)).reshape(
        (c.shape[0],) + tuple(mi * si for mi, si in zip(m, s)) + (ci,))
    return self._from_interleaved(y, rows, nb)

  def _transpose_s2d(self, ct):
    """Transpose as one stride-1 conv with the phases as output channels."""
    n = self.n_sp
    k = _dilate(self.k, self.rhs_dilation)               # [*k_eff, I, O]
    k_eff = k.shape[:n]
    ci, co = k.shape[n], k.shape[n + 1]
    s = self.strides
    d_max = [-(-ke // si) - 1 for ke, si in zip(k_eff, s)]  # D per dim
    # Gather table: for flipped offset e = D - d and phase a, tap s*d + a.
    kpad = jnp.pad(k, [(0, 1)] * n + [(0, 0), (0, 0)])     # zero tap at k_eff
    tap_idx = []
    for dim in range(n):
      e = np.arange(d_max[dim] + 1)[:, None]
      a = np.arange(s[dim])[None, :]
      t = s[dim] * (d_max[dim] - e) + a
      tap_idx.append(np.where(t < k_eff[dim], t, k_eff[dim]))
    # kt[e_1..e_n, a_1..a_n, I, O]
    grids = []
    for dim in range(n):
      shp = [1] * (2 * n)
      shp[dim], shp[n + dim] = tap_idx[dim].shape
      grids.append(tap_idx[dim].reshape(shp))
    kt = kpad[tuple(grids)]
    # -> [e..., O, a..., I] -> [e..., O, prod(s) * I]
    perm = (tuple(range(n)) + (2 * n + 1,) + tuple(range(n, 2 * n)) + (2 * n,))
    kt = jnp.transpose(kt, perm).reshape(
        tuple(d + 1 for d in d_max) + (co, int(np.prod(s)) * ci))
    rows = ct.shape[0]
    c, nb = self._to_nhwc(ct)
    y = conv_stride1(c, kt, tuple((d, d) for d in d_max))
    # y: [R, *(P + D), prod(s) * I] -> depth to space.
    m = y.shape[1:1 + n]
    y = y.reshape((c.shape[0],) + tuple(m) + tuple(s) + (ci,))
    inter = [0]
    for dim in range(n):
      inter += [1 + dim, 1 + n + dim]
    y = jnp.transpose(y, tuple(inter) + (2 * n + 1,))
    y = y.reshape((c.shape[0],) + tuple(mi * si for mi, si in zip(m, s))
                  + (ci,))
    return self._from_interleaved(y, rows, nb)


def _nhwc_dn(n: int):
  return lax.ConvDimensionNumbers((0, n + 1) + tuple(range(1, n + 1)),
                                  (n + 1, n) + tuple(range(n)),
                                  (0, n + 1) + tuple(range(1, n + 1)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_stride1(x, k, pads):
  """Stride-1 conv ``x[B, *S, I] * k[*T, I, O]`` with padding ``pads``.

  XLA's own conv forward, with a VJP written as per-tap GEMMs: XLA:CPU
  runs the kernel gradient of such a conv (``B`` = thousands of pulled rows
  contracted) as a slow generic convolution, 2 s per MNIST point in the
  gradient of the certifiable loss; with the GEMMs that gradient is 10x
  faster. ``pads``: ``((lo, hi), ...)`` per spatial dim, non-negative.
  """
  if any(int(v) < 0 for p in pads for v in p):
    raise ValueError(f'conv_stride1 needs non-negative pads, got {pads}')
  n = k.ndim - 2
  return lax.conv_general_dilated(x, k, (1,) * n, pads,
                                  dimension_numbers=_nhwc_dn(n),
                                  precision=EXACT)


def _conv_stride1_fwd(x, k, pads):
  return conv_stride1(x, k, pads), (x, k)


def _conv_stride1_bwd(pads, res, g):
  x, k = res
  n = k.ndim - 2
  taps, (ci, co) = k.shape[:n], k.shape[n:]
  xp = jnp.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)])
  out_sp = g.shape[1:1 + n]
  g2 = g.reshape(-1, co)
  dk = []
  dxp = jnp.zeros(xp.shape, x.dtype)
  for t in itertools.product(*[range(ti) for ti in taps]):
    window = (slice(None),) + tuple(slice(ti, ti + p) for ti, p in
                                    zip(t, out_sp)) + (slice(None),)
    dk.append(jnp.matmul(xp[window].reshape(-1, ci).T, g2, precision=EXACT))
    part = jnp.matmul(g2, k[t].T, precision=EXACT).reshape(
        g.shape[:1 + n] + (ci,))
    dxp = dxp + jnp.pad(part, [(0, 0)] + [
        (ti, xs - ti - p) for ti, xs, p in zip(t, xp.shape[1:1 + n], out_sp)]
        + [(0, 0)])
  dx = dxp[(slice(None),) + tuple(slice(lo, lo + xs) for (lo, _), xs in
                                  zip(pads, x.shape[1:1 + n])) + (slice(None),)]
  return dx, jnp.stack(dk).reshape(k.shape)


conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def from_params(params, lhs_shape, rhs) -> Optional[Conv]:
  """A ``Conv`` for ``conv_general_dilated(lhs, rhs, **params)``, if handled."""
  if (params.get('feature_group_count', 1) != 1
      or params.get('batch_group_count', 1) != 1
      or any(d != 1 for d in params['lhs_dilation'])):
    return None
  padding = params['padding']
  if isinstance(padding, str):
    return None
  dn = params['dimension_numbers']
  return Conv(to_hwio(rhs, dn.rhs_spec), params['window_strides'], padding,
              params['rhs_dilation'], dn.lhs_spec, dn.out_spec, lhs_shape)

