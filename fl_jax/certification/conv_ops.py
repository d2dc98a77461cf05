"""Convolutions on many generator images, arranged for XLA:CPU.

The propagation applies a model's convolution to thousands of generator
images (forward) or its transpose to thousands of cotangent rows (backward).
XLA:CPU runs a convolution fast only in the NHWC / HWIO form without input
dilation; the transpose that ``jax.vjp`` produces for a strided conv uses
input (lhs) dilation and a kernel layout that falls off that path (about 5x
slower here). So:

* forward: ``conv_general_dilated`` with the kernel in HWIO;
* transpose of a stride-``s`` conv: one stride-1 conv over the *output*
  grid with ``prod(s)`` phases stacked as output channels, then
  depth-to-space (sub-pixel / space-to-depth form). For a tap ``t`` and
  phase ``a``: input position ``q`` with ``q + pad_lo = s * m + a`` receives
  ``sum_d ct[m - d] K[s * d + a]^T``.

Only ``feature_group_count == batch_group_count == 1`` and no lhs dilation
are handled here; other convs fall back to ``jax.vjp``.
"""
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax


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
               lhs_spec, out_spec, in_shape, precision=None):
    self.k = kernel_hwio
    self.n_sp = kernel_hwio.ndim - 2
    self.strides = tuple(window_strides)
    self.padding = tuple(tuple(p) for p in padding)
    self.rhs_dilation = tuple(rhs_dilation)
    self.lhs_spec = tuple(lhs_spec)
    self.out_spec = tuple(out_spec)
    self.in_shape = tuple(in_shape)
    self.precision = precision
    n = self.n_sp
    rhs_spec = (n + 1, n) + tuple(range(n))
    self.dn = lax.ConvDimensionNumbers(self.lhs_spec, rhs_spec, self.out_spec)

  def __call__(self, x):
    return lax.conv_general_dilated(
        x, self.k, self.strides, self.padding, rhs_dilation=self.rhs_dilation,
        dimension_numbers=self.dn, precision=self.precision)

  def abs(self, r):
    return lax.conv_general_dilated(
        r, jnp.abs(self.k), self.strides, self.padding,
        rhs_dilation=self.rhs_dilation, dimension_numbers=self.dn,
        precision=self.precision)

  def transpose(self, ct):
    """Applies the transposed conv to ``ct[n, *out_shape]``."""
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
    # ct to [rows*batch, *spatial, O] (NHWC-like), run the stride-1 conv.
    rows = ct.shape[0]
    out_perm = (self.out_spec[0],) + tuple(self.out_spec[2:]) + (
        self.out_spec[1],)
    c = jnp.transpose(ct, (0,) + tuple(p + 1 for p in out_perm))
    nb = c.shape[1]
    out_sp = c.shape[2:2 + n]
    c = c.reshape((rows * nb,) + tuple(out_sp) + (co,))
    dn = lax.ConvDimensionNumbers(
        (0, n + 1) + tuple(range(1, n + 1)),
        (n + 1, n) + tuple(range(n)),
        (0, n + 1) + tuple(range(1, n + 1)))
    y = lax.conv_general_dilated(c, kt, (1,) * n, [(d, d) for d in d_max],
                                 dimension_numbers=dn,
                                 precision=self.precision)
    # y: [R, *(P + D), prod(s) * I] -> depth to space.
    m = y.shape[1:1 + n]
    y = y.reshape((rows * nb,) + tuple(m) + tuple(s) + (ci,))
    inter = [0]
    for dim in range(n):
      inter += [1 + dim, 1 + n + dim]
    y = jnp.transpose(y, tuple(inter) + (2 * n + 1,))
    y = y.reshape((rows * nb,) + tuple(mi * si for mi, si in zip(m, s)) + (ci,))
    # Crop / pad to the input extent: index q + pad_lo.
    in_sp = [self.in_shape[d] for d in self.lhs_spec[2:]]
    slices = [slice(None)]
    pads = [(0, 0)]
    for dim in range(n):
      lo = self.padding[dim][0]
      avail = y.shape[1 + dim] - lo
      need = in_sp[dim]
      if lo < 0:
        raise ValueError('negative padding is not supported')
      pads.append((0, max(0, need - avail)))
      slices.append(slice(lo, lo + need))
    pads.append((0, 0))
    if any(p[1] for p in pads):
      y = jnp.pad(y, pads)
    y = y[tuple(slices) + (slice(None),)]
    y = y.reshape((rows, nb) + tuple(in_sp) + (ci,))
    # Back to the lhs layout.
    lhs_perm = (self.lhs_spec[0],) + tuple(self.lhs_spec[2:]) + (
        self.lhs_spec[1],)
    inv = np.argsort(lhs_perm)
    return jnp.transpose(y, (0,) + tuple(int(i) + 1 for i in inv))


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
              params['rhs_dilation'], dn.lhs_spec, dn.out_spec, lhs_shape,
              params.get('precision'))

