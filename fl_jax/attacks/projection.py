"""Norm constraints of white-box attackers: l2-ball projection and scaling.

The PGD attack of the edge-case paper keeps its local model inside the l2 ball
of radius ``delta`` around the global model ``w`` so that norm-based defences
do not notice it::

    Pi(v) = w + (v - w) * min(1, delta / ||v - w||_2),

with a radius that decays per round, ``delta_t = delta_0 * decay**t``. Model
replacement (Bagdasaryan et al. 2020) scales the malicious update by
``gamma = n_S / n_i`` so that, under FedAvg with honest updates that nearly
cancel, the next global model *is* the attacker's model::

    w_next = w + sum_{j in S} n_j / n_S (w_j - w)
           = w + (n_i / n_S) * gamma (w_i - w) + sum_{j != i} n_j / n_S (w_j - w)
           = w_i + sum_{j != i} n_j / n_S (w_j - w).

All functions are pure and jit-friendly; ``||.||_2`` is the global norm over
all leaves of the pytree.

References:
  Wang et al., "Attack of the Tails", NeurIPS 2020, Section 2 (b), (c) and
  Appendix A.
  Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020.
"""
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import tree_math
from fl_jax.types import Array, Params, Updates


def clip_to_l2_ball(update: Updates, radius) -> Updates:
  """``u * min(1, radius / ||u||_2)`` (the identity inside the ball).

  Args:
    update: a pytree ``u``.
    radius: ``delta >= 0`` (``inf`` means no constraint; may be traced).

  Returns:
    A pytree like ``update`` with norm ``<= radius``.
  """
  check_radius(radius)
  norm = tree_math.tree_l2_norm(update)
  radius = jnp.asarray(radius, jnp.float32)
  # Safe division: a zero update is left as it is.
  factor = jnp.where(norm > radius, radius / jnp.where(norm > 0, norm, 1.0), 1.0)
  return tree_math.tree_scale(update, factor)


def check_radius(radius) -> None:
  """Raises ValueError unless a concrete ``radius`` is a scalar in ``[0, inf]``.

  Traced radii (e.g. a decayed radius inside the round) are not checked.
  """
  if isinstance(radius, jax.core.Tracer):
    return
  arr = np.asarray(radius)
  if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.number):
    raise ValueError(f'radius must be a real scalar, got {radius!r}')
  if np.isnan(arr) or arr < 0:
    raise ValueError(f'radius must be >= 0 (inf allowed), got {radius!r}')


def project_l2_ball(params: Params, center: Params, radius) -> Params:
  """Projects ``params`` onto the l2 ball of radius ``delta`` around ``center``.

  .. math:: \\Pi(v) = w + (v - w)\\,\\min\\left(1,
            \\frac{\\delta}{\\lVert v - w \\rVert_2}\\right)

  Args:
    params: the point ``v`` (e.g. the attacker's local model).
    center: ``w`` (the global model), same structure.
    radius: ``delta >= 0`` (may be traced; ``inf`` is the identity).

  Returns:
    ``Pi(v)``; equal to ``params`` when ``||v - w|| <= delta``.
  """
  diff = tree_math.tree_sub(params, center)
  return tree_math.tree_add(center, clip_to_l2_ball(diff, radius))


def decayed_radius(delta0, decay, round_idx) -> Array:
  """``delta_t = delta_0 * decay**t`` (edge-case paper: ``decay = 0.998``)."""
  return jnp.asarray(delta0, jnp.float32) * jnp.power(
      jnp.asarray(decay, jnp.float32), jnp.asarray(round_idx, jnp.float32))


def replacement_factor(weights: Array, malicious: Array) -> Array:
  """``gamma = n_S / n_M``: total weight over the malicious clients' weight.

  With one attacker ``i`` this is the ``n_S / n_i`` of model replacement;
  with several coordinated attackers that all send the same update, their
  joint FedAvg weight is ``n_M / n_S`` and scaling by ``n_S / n_M`` again
  makes the aggregate equal the attacker's target (up to the honest terms).

  Args:
    weights: ``[m]`` FedAvg weights ``n_j`` of the sampled clients.
    malicious: ``[m]`` bool, the sampled malicious clients.

  Returns:
    A float32 scalar (1 when no malicious weight is present).
  """
  weights = jnp.asarray(weights, jnp.float32)
  n_s = jnp.sum(weights)
  n_m = jnp.sum(jnp.where(malicious, weights, 0.0))
  return jnp.where(n_m > 0, n_s / jnp.where(n_m > 0, n_m, 1.0), 1.0)


def scale_update(update: Updates, gamma) -> Updates:
  """``gamma * u`` (the model-replacement boost of an update ``u = w_i - w``)."""
  return tree_math.tree_scale(update, jnp.asarray(gamma, jnp.float32))
