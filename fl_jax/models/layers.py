"""Flax NNX layers from which every fl_jax model is built.

Only affine maps, ReLU, reshapes and pooling are used, so the certification
module can propagate zonotopes through any model here.

``Conv`` offers two implementations of the same maths, chosen by ``impl``:

* ``'xla'``: ``lax.conv_general_dilated`` (what accelerators want);
* ``'patches'``: im2col (patches gathered by strided slices) then one matmul.
  Inside the ``lax.scan`` of local training on XLA:CPU this ran an SGD step of
  the MNIST CNN 6x faster than ``'xla'`` and 2.6x faster than patches from
  ``lax.conv_general_dilated_patches`` (whose gradient is a slow transposed
  convolution).

``impl=None`` picks ``'patches'`` on CPU and ``'xla'`` elsewhere.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_CONV_IMPLS = ('xla', 'patches')


def default_conv_impl() -> str:
  return 'patches' if jax.default_backend() == 'cpu' else 'xla'


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def conv2d(x, kernel, bias, stride, padding, impl: str):
  """2-D convolution ``x[B,H,W,Cin] * kernel[kh,kw,Cin,Cout] + bias[Cout]``.

  ``padding`` is a pair of ints (symmetric zero padding of H and W).
  """
  kh, kw, cin, cout = kernel.shape
  pads = ((padding[0], padding[0]), (padding[1], padding[1]))
  if impl == 'xla':
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=stride, padding=pads,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  elif impl == 'patches':
    # im2col by strided slices: feature index = (i * kw + j) * Cin + c, which is
    # exactly the row order of the HWIO kernel reshaped to [kh * kw * Cin, Cout].
    # Its gradient is a sum of pads, far cheaper on XLA:CPU than the transposed
    # convolution behind ``lax.conv_general_dilated_patches``.
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (xp.shape[1] - kh) // stride[0] + 1
    wo = (xp.shape[2] - kw) // stride[1] + 1
    cols = [jax.lax.slice(xp, (0, i, j, 0),
                          (xp.shape[0], i + (ho - 1) * stride[0] + 1,
                           j + (wo - 1) * stride[1] + 1, cin),
                          (1, stride[0], stride[1], 1))
            for i in range(kh) for j in range(kw)]
    y = jnp.dot(jnp.concatenate(cols, axis=-1), kernel.reshape(kh * kw * cin, cout))
  else:
    raise ValueError(f'unknown conv impl {impl!r}; expected one of {_CONV_IMPLS}')
  return y + bias


class Conv(nnx.Module):
  """Conv layer with HWIO kernel, symmetric integer padding and a bias."""

  def __init__(self, in_features: int, out_features: int, kernel_size,
               stride=1, padding=0, *, impl: Optional[str] = None,
               rngs: nnx.Rngs):
    kh, kw = _pair(kernel_size)
    self.stride = _pair(stride)
    self.padding = _pair(padding)
    self.impl = impl or default_conv_impl()
    if self.impl not in _CONV_IMPLS:
      raise ValueError(f'unknown conv impl {self.impl!r}; expected one of {_CONV_IMPLS}')
    init = nnx.initializers.he_normal()
    self.kernel = nnx.Param(init(rngs.params(), (kh, kw, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,)))

  def __call__(self, x):
    return conv2d(x, self.kernel[...], self.bias[...], self.stride, self.padding,
                  self.impl)


class Dense(nnx.Module):
  """Fully connected layer ``x @ kernel + bias``."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.he_normal()
    self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,)))

  def __call__(self, x):
    return jnp.dot(x, self.kernel[...]) + self.bias[...]


def max_pool(x, size: int = 2, stride: int = 2):
  """``size x size`` max pooling with the given stride, no padding (NHWC)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                               (1, stride, stride, 1), 'VALID')


def flatten(x):
  return x.reshape(x.shape[0], -1)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


def dense_stack(widths: Sequence[int], *, rngs: nnx.Rngs):
  return nnx.List([Dense(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
