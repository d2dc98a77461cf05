"""Abstract domains for certification: zonotopes and intervals (boxes).

A zonotope over ``k`` error symbols ``e in [-1, 1]^k`` is the set

    Z = { c + sum_i e_i g_i : e in [-1, 1]^k },

stored as a centre ``c[*shape]`` and generators ``g[k, *shape]`` (Singh et al.
2018; Zizzo et al. 2021, Eq. 2). Its per-coordinate interval hull is
``c +- sum_i |g_i|``. An interval (box) is ``[lower, upper]`` per coordinate.

Both are NamedTuples, hence pytrees: they jit, vmap (a leading points axis on
every leaf) and differentiate like any other array container. The methods
describe one set; for a batch ``z`` (leaves ``[B, ...]``) use
``jax.vmap(Zonotope.bounds)(z)``.

References:
  Singh, Gehr, Mirman, Pueschel, Vechev, "Fast and Effective Robustness
  Certification", NeurIPS 2018 (DeepZ / DeepZono).
  Gowal et al., "On the Effectiveness of Interval Bound Propagation for
  Training Verifiably Robust Models", 2018 (IBP).
"""
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

from fl_jax.types import Array


class Zonotope(NamedTuple):
  """``{center + sum_i e_i generators[i] : e in [-1, 1]^k}``.

  Attributes:
    center: ``[*shape]``.
    generators: ``[k, *shape]``, one row per error symbol.
  """
  center: Array
  generators: Array

  def radius(self) -> Array:
    """``sum_i |generators[i]|``, shape ``[*shape]``."""
    return jnp.sum(jnp.abs(self.generators), axis=0)

  def bounds(self) -> Tuple[Array, Array]:
    """Interval hull ``(center - radius, center + radius)``."""
    r = self.radius()
    return self.center - r, self.center + r


class Interval(NamedTuple):
  """The box ``[lower, upper]`` (elementwise), both ``[*shape]``."""
  lower: Array
  upper: Array

  def bounds(self) -> Tuple[Array, Array]:
    return self.lower, self.upper


def clipped_box(x: Array, eps, lo=0.0, hi=1.0) -> Tuple[Array, Array]:
  """Centre and radius of ``{x' : |x' - x|_inf <= eps} n [lo, hi]``.

  The L-infinity ball is intersected with the valid input range coordinate
  by coordinate: ``l = clip(x - eps, lo, hi)``, ``u = clip(x + eps, lo, hi)``;
  the box is returned as ``((l + u) / 2, (u - l) / 2)``.

  Args:
    x: ``[*shape]`` point (expected inside ``[lo, hi]``).
    eps: radius, a scalar or broadcastable to ``x``.
    lo: lower end of the valid range (scalar or broadcastable).
    hi: upper end of the valid range.

  Returns:
    ``(center, radius)``, both ``[*shape]``; ``radius >= 0``.
  """
  l = jnp.clip(x - eps, lo, hi)
  u = jnp.clip(x + eps, lo, hi)
  return (l + u) / 2, (u - l) / 2


def input_box(x: Array, eps, lo=0.0, hi=1.0) -> Zonotope:
  """The clipped L-infinity ball around ``x`` as a zonotope.

  One generator per input feature: feature ``j`` gets generator
  ``r_j * onehot(j)`` with ``r_j = (u_j - l_j) / 2`` (see ``clipped_box``), so
  the zonotope is exactly the box. A zero-width feature gets a zero generator
  (shapes stay static).

  Args:
    x: ``[*shape]`` one point (no batch axis; vmap for several).
    eps: scalar radius.
    lo: lower end of the valid range.
    hi: upper end of the valid range.

  Returns:
    ``Zonotope(center[*shape], generators[prod(shape), *shape])``.
  """
  c, r = clipped_box(x, eps, lo, hi)
  n = c.size
  gens = (jnp.eye(n, dtype=c.dtype) * r.reshape(-1)).reshape((n,) + c.shape)
  return Zonotope(c, gens)


def relu_relaxation(lower: Array, upper: Array):
  """DeepZono ReLU relaxation from pre-activation bounds.

  For a neuron with bounds ``l < 0 < u`` (crossing) the ReLU is replaced by

      relu(x) in  lambda * x + mu + mu * e_new,
      lambda = u / (u - l),   mu = -lambda * l / 2 (> 0),

  which is the minimal-area parallelogram of DeepZ. Stable neurons are exact:
  ``u <= 0`` gives ``0`` (lambda = mu = 0) and ``l >= 0`` gives the identity
  (lambda = 1, mu = 0); in particular ``u == 0``, ``l == 0`` and ``l == u``
  are all handled exactly. The denominator is only evaluated where it is
  strictly positive, so values and gradients stay finite.

  Args:
    lower: ``[*shape]`` lower bounds.
    upper: ``[*shape]`` upper bounds (``>= lower``).

  Returns:
    ``(slope, shift, new_radius)``: the output is
    ``slope * x + shift + new_radius * e_new`` with one fresh symbol per
    neuron; ``new_radius == shift`` (zero for stable neurons).
  """
  cross = (lower < 0) & (upper > 0)
  active = lower >= 0
  one = jnp.ones_like(upper)
  # A single division last: XLA then keeps the slope in one buffer instead of
  # re-evaluating the selects inside every consumer.
  num = jnp.where(cross, upper, jnp.where(active, one, jnp.zeros_like(upper)))
  slope = num / jnp.where(cross, upper - lower, one)
  shift = jnp.where(cross, -slope * lower / 2, jnp.zeros_like(lower))
  return slope, shift, shift


def zonotope_relu(z: Zonotope) -> Zonotope:
  """DeepZono ReLU on a materialised zonotope (appends ``prod(shape)`` gens).

  Reference implementation used by tests; the propagation engine applies the
  same relaxation lazily. New generator ``j`` is ``mu_j * onehot(j)`` (zero
  for stable neurons).

  Args:
    z: ``Zonotope(center[*shape], generators[k, *shape])``.

  Returns:
    ``Zonotope(center[*shape], generators[k + prod(shape), *shape])``.
  """
  lo, hi = z.bounds()
  slope, shift, new_r = relu_relaxation(lo, hi)
  n = z.center.size
  new = (jnp.eye(n, dtype=z.center.dtype) * new_r.reshape(-1)).reshape(
      (n,) + z.center.shape)
  return Zonotope(slope * z.center + shift,
                  jnp.concatenate([slope * z.generators, new], axis=0))


def zonotope_affine(z: Zonotope, linear_fn, offset=0.0) -> Zonotope:
  """``linear_fn(x) + offset`` on a materialised zonotope (exact).

  Args:
    z: input zonotope.
    linear_fn: a linear function of one ``[*shape]`` array.
    offset: added to the centre only.

  Returns:
    The image zonotope (same number of generators).
  """
  return Zonotope(linear_fn(z.center) + offset,
                  jax.vmap(linear_fn)(z.generators))
