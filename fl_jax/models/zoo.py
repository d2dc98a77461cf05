"""The networks of the two papers, as Flax NNX modules.

All take NHWC float inputs in [0, 1] and return logits. ReLU is the only
non-linearity; VGG-9 and LeNet-5 also use max pooling.
"""
from typing import Optional

import jax
from flax import nnx

from fl_jax.models.layers import Conv, Dense, conv_out, dense_stack, flatten, max_pool


class MnistCNN(nnx.Module):
  """MNIST CNN of the certified-FAT paper (Zizzo et al. 2021), Appendix D.

  ``Conv(2,2) 16x4x4 -> ReLU -> Conv(2,2) 32x4x4 -> ReLU -> FC 1000 -> ReLU ->
  FC 10``. The paper leaves padding unstated; we use 1, so 28 -> 14 -> 7 and the
  first dense layer sees ``7 * 7 * 32 = 1568`` features.
  """

  def __init__(self, input_shape, num_classes, *, impl=None, rngs: nnx.Rngs):
    h, w, c = input_shape
    self.conv1 = Conv(c, 16, 4, 2, 1, impl=impl, rngs=rngs)
    self.conv2 = Conv(16, 32, 4, 2, 1, impl=impl, rngs=rngs)
    h, w = (conv_out(conv_out(s, 4, 2, 1), 4, 2, 1) for s in (h, w))
    self.fc1 = Dense(h * w * 32, 1000, rngs=rngs)
    self.fc2 = Dense(1000, num_classes, rngs=rngs)

  def features(self, x):
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return jax.nn.relu(self.fc1(flatten(x)))

  def __call__(self, x):
    return self.fc2(self.features(x))


class CifarCNN(nnx.Module):
  """CIFAR-10 CNN of the certified-FAT paper, Appendix D (padding 1).

  ``Conv(1,1) 32x3x3 -> Conv(2,2) 64x4x4 -> Conv(1,1) 64x3x3 -> Conv(2,2)
  128x4x4 -> FC 512 -> FC 512 -> FC 10``, ReLU after every layer but the last.
  """

  def __init__(self, input_shape, num_classes, *, impl=None, rngs: nnx.Rngs):
    h, w, c = input_shape
    spec = [(c, 32, 3, 1), (32, 64, 4, 2), (64, 64, 3, 1), (64, 128, 4, 2)]
    self.convs = nnx.List([Conv(i, o, k, s, 1, impl=impl, rngs=rngs) for i, o, k, s in spec])
    for _, _, k, s in spec:
      h, w = conv_out(h, k, s, 1), conv_out(w, k, s, 1)
    self.fcs = dense_stack([h * w * 128, 512, 512, num_classes], rngs=rngs)

  def features(self, x):
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    x = flatten(x)
    for fc in self.fcs[:-1]:
      x = jax.nn.relu(fc(x))
    return x

  def __call__(self, x):
    return self.fcs[-1](self.features(x))


def _scaled(width: float, *channels: int):
  """Channel counts times the width multiplier ``k``, at least 1 each."""
  if not width > 0:
    raise ValueError(f'width must be > 0, got {width!r}')
  return tuple(max(1, int(round(c * width))) for c in channels)


class LeNet5(nnx.Module):
  """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling.

  ``Conv 6x5x5 (pad 2) -> pool -> Conv 16x5x5 -> pool -> FC 120 -> FC 84 ->
  FC classes``; ``width = k`` multiplies every hidden width (the edge-case
  paper's capacity study, Figure 10: k = 0.5 thin, 2 wide). 62k parameters
  at k = 1.
  """

  def __init__(self, input_shape, num_classes, *, width: float = 1.0, impl=None,
               rngs: nnx.Rngs):
    h, w, c = input_shape
    c1, c2, f1, f2 = _scaled(width, 6, 16, 120, 84)
    self.conv1 = Conv(c, c1, 5, 1, 2, impl=impl, rngs=rngs)
    self.conv2 = Conv(c1, c2, 5, 1, 0, impl=impl, rngs=rngs)
    h = conv_out(conv_out(h, 5, 1, 2) // 2, 5, 1, 0) // 2
    w = conv_out(conv_out(w, 5, 1, 2) // 2, 5, 1, 0) // 2
    self.fcs = dense_stack([h * w * c2, f1, f2, num_classes], rngs=rngs)

  def features(self, x):
    x = max_pool(jax.nn.relu(self.conv1(x)))
    x = max_pool(jax.nn.relu(self.conv2(x)))
    x = flatten(x)
    for fc in self.fcs[:-1]:
      x = jax.nn.relu(fc(x))
    return x

  def __call__(self, x):
    return self.fcs[-1](self.features(x))


class LeNet(nnx.Module):
  """The PyTorch MNIST example network, the edge-case paper's Task-2 "LeNet".

  ``Conv 32x3x3 -> ReLU -> Conv 64x3x3 -> ReLU -> pool -> FC 128 -> ReLU ->
  FC classes`` (VALID convs: 28 -> 26 -> 24 -> 12, so FC 1 sees 9216
  features; 1.2M parameters at ``width = 1``). The example's two dropout
  layers are left out: client training here is deterministic given its key.
  """

  def __init__(self, input_shape, num_classes, *, width: float = 1.0, impl=None,
               rngs: nnx.Rngs):
    h, w, c = input_shape
    c1, c2, f1 = _scaled(width, 32, 64, 128)
    self.conv1 = Conv(c, c1, 3, 1, 0, impl=impl, rngs=rngs)
    self.conv2 = Conv(c1, c2, 3, 1, 0, impl=impl, rngs=rngs)
    h, w = (conv_out(conv_out(s, 3, 1, 0), 3, 1, 0) // 2 for s in (h, w))
    self.fc1 = Dense(h * w * c2, f1, rngs=rngs)
    self.fc2 = Dense(f1, num_classes, rngs=rngs)

  def features(self, x):
    x = jax.nn.relu(self.conv1(x))
    x = max_pool(jax.nn.relu(self.conv2(x)))
    return jax.nn.relu(self.fc1(flatten(x)))

  def __call__(self, x):
    return self.fc2(self.features(x))


class VGG9(nnx.Module):
  """VGG-9 without BatchNorm, edge-case paper (Wang et al. 2020) Table 2.

  Eight 3x3 convs (stride 1, padding 1) of widths 64, 128, 256, 256, 512, 512,
  512, 512 with 2x2 max pooling after convs 1, 2, 4, 6 and 8, then one dense
  layer 512 -> classes (for 32x32 inputs the map is 1x1 by then).
  """

  def __init__(self, input_shape, num_classes, *, impl=None, rngs: nnx.Rngs):
    h, w, c = input_shape
    widths = [64, 128, 256, 256, 512, 512, 512, 512]
    self.pool_after = (0, 1, 3, 5, 7)
    ins = [c] + widths[:-1]
    self.convs = nnx.List([Conv(i, o, 3, 1, 1, impl=impl, rngs=rngs) for i, o in zip(ins, widths)])
    for _ in self.pool_after:
      h, w = h // 2, w // 2
    if h < 1 or w < 1:
      raise ValueError(f'VGG-9 needs inputs of at least 32x32, got {input_shape}')
    self.fc = Dense(h * w * 512, num_classes, rngs=rngs)

  def features(self, x):
    for i, conv in enumerate(self.convs):
      x = jax.nn.relu(conv(x))
      if i in self.pool_after:
        x = max_pool(x)
    return flatten(x)

  def __call__(self, x):
    return self.fc(self.features(x))


class MLP(nnx.Module):
  """A small fully connected ReLU network (for tests and quick runs).

  ``hidden`` widths (default one layer of 100), each times ``width``.
  """

  def __init__(self, input_shape, num_classes, *, hidden=(100,), width: float = 1.0,
               impl=None, rngs: nnx.Rngs):
    del impl
    size = 1
    for s in input_shape:
      size *= s
    self.fcs = dense_stack([size, *_scaled(width, *hidden), num_classes], rngs=rngs)

  def features(self, x):
    x = flatten(x)
    for fc in self.fcs[:-1]:
      x = jax.nn.relu(fc(x))
    return x

  def __call__(self, x):
    return self.fcs[-1](self.features(x))


MODELS = {
    'mnist_cnn': MnistCNN,
    'cifar_cnn': CifarCNN,
    'lenet5': LeNet5,
    'lenet': LeNet,
    'vgg9': VGG9,
    'mlp': MLP,
}
