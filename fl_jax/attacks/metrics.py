"""Attack metrics: target-task accuracy, distances, aggregator selections.

* target-task (edge-case) accuracy: the share of edge-case inputs classified
  as the attacker's label, ``mean_i [f(x_i) = y_target_i]``;
* backdoor success rate: :func:`fl_jax.attacks.backdoor_success_rate`;
* distance of each client's model to the global model:
  ``||w_j - w||_2 = ||u_j||_2`` for the updates actually sent;
* whether the aggregator selected the attacker: for selection rules (Krum,
  Multi-Krum) whose diagnostics carry a per-client selection mask ``[m]``,
  ``any_j (selected_j & malicious_j)``.

References:
  Wang et al., "Attack of the Tails", NeurIPS 2020, Section 4 (target-task
  accuracy, norm differences, Krum / Multi-Krum selection frequencies).
"""
from typing import Optional

import jax.numpy as jnp

from fl_jax import metrics as metrics_lib
from fl_jax import tree_math
from fl_jax.types import ApplyFn, Array, Params

SELECTION_KEYS = ('selected', 'selected_mask', 'selection_mask', 'krum_selected',
                  'multi_krum_selected')


def target_accuracy(apply_fn: ApplyFn, params: Params, x, y_target,
                    chunk_size: int = 1000) -> Array:
  """Target-task accuracy ``mean_i [argmax f(x_i) = y_target_i]``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    x: ``[N, ...]`` edge-case (or triggered) inputs.
    y_target: ``[N]`` the attacker's labels.
    chunk_size: examples per forward pass.

  Returns:
    float32 scalar in ``[0, 1]``.
  """
  return metrics_lib.accuracy(apply_fn, params, jnp.asarray(x, jnp.float32),
                              jnp.asarray(y_target, jnp.int32), chunk_size)


def client_distances(updates) -> Array:
  """``||u_j||_2`` per client of stacked updates ``u_j = w_j - w``: ``[m]``."""
  return tree_math.stacked_l2_norms(updates)


def selection_mask(diagnostics: dict, key: Optional[str] = None) -> Array:
  """The aggregator's per-client selection mask ``[m]`` from its diagnostics.

  Args:
    diagnostics: ``RoundMetrics.diagnostics`` (a dict of arrays).
    key: the entry to use; ``None`` tries :data:`SELECTION_KEYS` in order.

  Returns:
    bool ``[m]`` (or ``[R, m]`` for stacked rounds).

  Raises:
    ValueError: no selection mask in the diagnostics (e.g. for a mean).
  """
  if key is not None:
    if key not in diagnostics:
      raise ValueError(f'diagnostics have no {key!r}; keys: {sorted(diagnostics)}')
    return jnp.asarray(diagnostics[key]).astype(bool)
  for k in SELECTION_KEYS:
    if k in diagnostics:
      return jnp.asarray(diagnostics[k]).astype(bool)
  raise ValueError(f'no selection mask among the diagnostics {sorted(diagnostics)}; '
                   f'expected one of {SELECTION_KEYS} (Krum / Multi-Krum)')


def attacker_selected(diagnostics: dict, malicious: Array,
                      key: Optional[str] = None) -> Array:
  """Whether the aggregator selected at least one malicious client.

  .. math:: \\mathrm{sel} = \\bigvee_j (s_j \\wedge \\mathrm{mal}_j)

  Args:
    diagnostics: the round's aggregator diagnostics (with a selection mask).
    malicious: ``[m]`` (or ``[R, m]``) bool, the clients whose rows the attack
      replaced (``RoundMetrics.attack['replaced']``).
    key: diagnostics entry of the selection mask (default: auto-detect).

  Returns:
    bool scalar (or ``[R]`` for stacked rounds).
  """
  sel = selection_mask(diagnostics, key)
  malicious = jnp.asarray(malicious).astype(bool)
  if sel.shape != malicious.shape:
    raise ValueError(f'selection mask {sel.shape} and malicious mask '
                     f'{malicious.shape} differ in shape')
  return jnp.any(sel & malicious, axis=-1)
