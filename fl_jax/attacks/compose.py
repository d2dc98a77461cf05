"""Composes a participation pattern with a crafting function into an Attack.

Coordinated malicious clients all send one crafted update. Each round:

1. ``malicious[m] = is_malicious[ids]`` marks the sampled malicious clients
   and ``active = participation.active(malicious, round)`` decides whether
   the attack fires;
2. the update is crafted **once per round** (not once per malicious client)
   under ``lax.cond(active, craft, skip)``: a round without an active attack
   runs the cheap branch only;
3. the rows of the sampled malicious clients are replaced by the crafted
   update with ``jnp.where`` (a mask over the client axis, no Python branch
   per client); when the attack is inactive, malicious clients behave
   honestly (their honestly trained rows are kept).

A crafting function has the signature::

    craft(global_params, updates[m, ...], weights[m], malicious[m], key,
          round, attack_data) -> (update, info)

where ``updates`` are the honest updates ``w_j - w`` the round computed (the
certified-FAT attacker knows the benign updates), ``weights`` the FedAvg
weights that will be reported (after ``reported_weight``), ``update`` one
unstacked pytree ``w_mal - w`` and ``info`` a dict of arrays (scalars or
fixed-shape) reported in ``RoundMetrics.attack``.

References:
  Zizzo et al., "Certified Federated Adversarial Training", 2021, Section 2.3
  (malicious clients coordinate when they participate together).
"""
from typing import Callable, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fl_jax import tree_math
from fl_jax.attacks.participation import Participation
from fl_jax.simulation.round import Attack
from fl_jax.types import Array

Craft = Callable[..., tuple]


class AttackerData(NamedTuple):
  """The attacker's pooled data, passed to the round as ``attack_data``.

  Attributes:
    x: ``[n, ...]`` inputs.
    y: ``[n]`` integer labels (or ``[n, C]`` soft labels).
    mask: ``[n]`` bool, true for real (not padded) examples.
  """
  x: Array
  y: Array
  mask: Array


def attacker_data(x, y, mask=None) -> AttackerData:
  """Packs NumPy/JAX arrays as :class:`AttackerData` (device arrays).

  Raises:
    ValueError: if the leading dimensions differ or the set is empty.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  mask = jnp.ones(x.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
  if x.ndim < 1 or x.shape[0] < 1:
    raise ValueError(f'x must be a non-empty batch [n, ...], got {x.shape}')
  if y.shape[:1] != x.shape[:1] or mask.shape != x.shape[:1]:
    raise ValueError(f'x {x.shape}, y {y.shape} and mask {mask.shape} must '
                     'share the leading dimension')
  return AttackerData(x, y, mask)


def _row_mask(mask: Array, leaf: Array) -> Array:
  return mask.reshape((-1,) + (1,) * (leaf.ndim - 1))


def replace_rows(updates, crafted, mask: Array):
  """Stacked ``updates[j] <- crafted`` where ``mask[j]``, else unchanged.

  Args:
    updates: stacked pytree ``[m, ...]``.
    crafted: one unstacked pytree, same structure.
    mask: ``[m]`` bool.

  Returns:
    The stacked pytree with the masked rows replaced.
  """
  return jax.tree.map(
      lambda u, c: jnp.where(_row_mask(mask, u), c[None].astype(u.dtype), u),
      updates, crafted)


def make_attack(participation: Participation, craft: Craft, *,
                reported_weight: Optional[float] = None) -> Attack:
  """Builds the round's :class:`fl_jax.simulation.Attack`.

  Args:
    participation: who is malicious, how clients are sampled and when the
      attack fires (:mod:`fl_jax.attacks.participation`).
    craft: the crafting function (see the module docstring), e.g.
      :func:`fl_jax.attacks.blackbox_craft`.
    reported_weight: FedAvg weight the attacking clients report (e.g. the
      size of their poisoned data set); ``None`` keeps their own sample
      counts.

  Returns:
    ``Attack(sample, apply)``; ``apply`` adds to the round's ``info``:
    ``active`` (bool), ``malicious`` (``[m]`` sampled malicious clients),
    ``replaced`` (``[m]`` rows overwritten), ``num_malicious``,
    ``crafted_norm`` (``||w_mal - w||``, 0 when inactive), ``distances``
    (``[m]`` l2 distance of each sent model to the global model) and the
    crafting function's own entries.
  """
  if not isinstance(participation, Participation):
    raise ValueError(f'participation must be a Participation, got '
                     f'{type(participation).__name__}')
  if not callable(craft):
    raise ValueError(f'craft must be callable, got {craft!r}')
  if reported_weight is not None and not (
      np.isfinite(reported_weight) and reported_weight > 0):
    raise ValueError(f'reported_weight must be a finite number > 0, got '
                     f'{reported_weight!r}')
  is_malicious = np.asarray(participation.is_malicious, bool)

  def apply(global_params, updates, weights, client_ids, key, round_idx,
            attack_data):
    malicious = jnp.asarray(is_malicious)[client_ids]
    active = jnp.asarray(participation.active(malicious, round_idx), bool)
    replaced = malicious & active
    if reported_weight is not None:
      weights = jnp.where(replaced, jnp.float32(reported_weight), weights)
    args = (global_params, updates, weights, malicious, key, round_idx,
            attack_data)
    out_shape = jax.eval_shape(craft, *args)

    def skip(*_):
      return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

    crafted, info = lax.cond(active, craft, skip, *args)
    updates = replace_rows(updates, crafted, replaced)
    info = dict(info)
    info.update(active=active, malicious=malicious, replaced=replaced,
                num_malicious=jnp.sum(malicious.astype(jnp.int32)),
                crafted_norm=tree_math.tree_l2_norm(crafted),
                distances=tree_math.stacked_l2_norms(updates))
    return updates, weights, info

  return Attack(participation.sample, apply)


def send_model_craft() -> Craft:
  """A craft that sends a precomputed malicious model passed as ``attack_data``.

  The update is ``w_mal - w`` for the current global model ``w``. It lets a
  launch script craft the malicious model once on the host (and evaluate it
  on its own) and then inject it through the round.
  """

  def craft(global_params, updates, weights, malicious, key, round_idx,
            attack_data):
    del updates, weights, malicious, key, round_idx
    update = jax.tree.map(lambda m, w: jnp.asarray(m, w.dtype) - w, attack_data,
                          global_params)
    return update, {}

  return craft
