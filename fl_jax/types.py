"""Type aliases used across fl_jax.

A *stacked* pytree carries a leading client axis on every leaf: a pytree of
shape ``[C, *leaf_shape]`` holds one value per client.
"""
from typing import Any, Callable, Mapping

import jax

Array = jax.Array
PRNGKey = jax.Array          # a typed key from ``jax.random.key``
Params = Any                 # a pytree of arrays (model parameters)
Updates = Any                # a pytree shaped like Params (e.g. w_i - w)
StackedParams = Any          # Params with a leading client axis [C, ...]
StackedUpdates = Any         # Updates with a leading client axis [C, ...]
Metrics = Mapping[str, Array]

# apply(params, x[B, H, W, C]) -> logits[B, num_classes]
ApplyFn = Callable[[Params, Array], Array]
# loss(params, x[B, ...], y[B], key) -> per-example loss [B]
PerExampleLossFn = Callable[[Params, Array, Array, PRNGKey], Array]


def is_traced(value) -> bool:
  """True for a value being traced by an outer ``jit`` / ``vmap`` / ``scan``.

  Validators accept traced values as they are (they cannot be inspected); a
  vectorized sweep passes its per-run settings to the builders this way, after
  checking every run's concrete value on the host.
  """
  return isinstance(value, jax.core.Tracer)
