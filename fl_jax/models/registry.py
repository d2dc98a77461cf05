"""Builds a model once and exposes it as pure ``init`` / ``apply`` functions.

Following the Flax NNX functional API, the module is split once into a static
graph definition and a parameter dict; ``apply`` merges them inside the traced
function, so jit, vmap and grad only ever see plain pytrees.
"""
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
from flax import nnx

from fl_jax.models.zoo import MODELS
from fl_jax.types import Array, Params, PRNGKey


class Model(NamedTuple):
  """A model as pure functions.

  Attributes:
    name: registry name.
    init: ``init(key) -> params`` (a nested dict of arrays).
    apply: ``apply(params, x[B, H, W, C]) -> logits[B, num_classes]``.
    features: ``features(params, x) -> [B, F]``, the penultimate-layer
      activations (the input of the last dense layer).
    input_shape: ``(H, W, C)``.
    num_classes: number of logits.
  """
  name: str
  init: Callable[[PRNGKey], Params]
  apply: Callable[[Params, Array], Array]
  input_shape: Tuple[int, ...]
  num_classes: int
  features: Callable[[Params, Array], Array]


def get_model(name: str, input_shape, num_classes: int, *,
              conv_impl: Optional[str] = None, **kwargs: Any) -> Model:
  """Returns the pure ``init`` / ``apply`` pair of a registered model.

  Args:
    name: one of ``mnist_cnn``, ``cifar_cnn``, ``lenet5``, ``vgg9``, ``mlp``.
    input_shape: ``(H, W, C)`` of one example.
    num_classes: number of output logits.
    conv_impl: ``'xla'`` or ``'patches'`` (same maths); ``None`` picks by backend.
    **kwargs: extra constructor arguments (e.g. ``hidden`` for ``mlp``).

  Example:
    >>> m = get_model('mnist_cnn', (28, 28, 1), 10)
    >>> params = m.init(jax.random.key(0))
    >>> logits = m.apply(params, jnp.zeros((8, 28, 28, 1)))
  """
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; expected one of {sorted(MODELS)}')
  input_shape = tuple(int(s) for s in input_shape)
  if len(input_shape) != 3 or min(input_shape) <= 0:
    raise ValueError(f'input_shape must be (H, W, C) of positive ints, got {input_shape}')
  if num_classes <= 1:
    raise ValueError(f'num_classes must be >= 2, got {num_classes}')
  cls = MODELS[name]

  def build(key):
    return cls(input_shape, num_classes, impl=conv_impl, rngs=nnx.Rngs(params=key),
               **kwargs)

  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))))

  def init(key: PRNGKey) -> Params:
    return nnx.to_pure_dict(nnx.split(build(key))[1])

  def apply(params: Params, x: Array) -> Array:
    return nnx.merge(graphdef, params)(x)

  def features(params: Params, x: Array) -> Array:
    return nnx.merge(graphdef, params).features(x)

  return Model(name, init, apply, input_shape, num_classes, features)


def num_params(params: Params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
