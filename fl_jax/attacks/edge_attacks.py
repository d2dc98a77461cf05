"""The edge-case paper's three attacks as crafting functions.

All three train, from the global model ``w``, on the attacker's data ``D'``
(a mix of edge-case and clean samples, passed to the round as
:class:`fl_jax.attacks.AttackerData`) and return one update ``w_mal - w``
that :func:`fl_jax.attacks.make_attack` sends for every sampled malicious
client:

(a) **black-box**: plain local training with the honest clients'
    hyper-parameters (the attacker controls only its data);
(b) **PGD**: local SGD whose model is projected every ``k`` steps (and at the
    end) onto the l2 ball of radius ``delta_t = delta_0 * decay**t`` around
    ``w``, so it passes norm-based defences;
(c) **PGD with model replacement**: (b) with a small training radius, then
    the update is boosted by ``gamma = n_S / n_i`` (``n_S / n_M`` for several
    coordinated attackers) so that FedAvg over nearly cancelling honest
    updates lands on the attacker's model, then projected onto a sending
    radius ``delta'_t`` so that it still passes the defence.

References:
  Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor Federated
  Learning", NeurIPS 2020, Section 2 (a)-(c) and Appendix A (e.g. MNIST /
  EMNIST Task 2: PGD radius 1.5 against norm clipping and 1 against Krum,
  Multi-Krum and RFA; replacement radius 0.3 / 0.25; decay 0.998 per round;
  projection once every 10 SGD steps).
  Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020.
"""
from typing import Callable, Optional

import numpy as np

from fl_jax import tree_math
from fl_jax.attacks import projection
from fl_jax.attacks.compose import Craft
from fl_jax.client.update import ClientBatch
from fl_jax.types import is_traced


def _check_schedule(name, delta0, decay):
  """Checks ``delta0 > 0`` and ``decay`` in ``(0, 1]``; traced values pass."""
  if not is_traced(delta0) and not (np.isfinite(delta0) and delta0 > 0):
    raise ValueError(f'{name} must be a finite number > 0, got {delta0!r}')
  if not is_traced(decay) and not (np.isfinite(decay) and 0 < decay <= 1):
    raise ValueError(f'decay must be in (0, 1], got {decay!r}')


def blackbox_craft(client_update: Callable) -> Craft:
  """Black-box attack: honest local training on the poisoned data ``D'``.

  Args:
    client_update: the honest clients' function from
      :func:`fl_jax.client.make_client_update` (same loss and
      hyper-parameters, as in the paper).

  Returns:
    A craft; ``info``: ``attacker_loss``.
  """

  def craft(global_params, updates, weights, malicious, key, round_idx, data):
    del updates, weights, malicious
    params, cm = client_update(global_params, ClientBatch(data.x, data.y),
                               data.mask, key, round_idx)
    return tree_math.tree_sub(params, global_params), {'attacker_loss': cm.train_loss}

  return craft


def pgd_craft(trainer: Callable, *, delta0: float, decay: float = 1.0) -> Craft:
  """PGD attack: training projected onto ``B_2(w, delta_t)``.

  Args:
    trainer: from :func:`fl_jax.attacks.make_local_trainer` (with
      ``project_every = k``; the attacker may use its own hyper-parameters).
    delta0: ``delta_0 > 0``, e.g. the norm-clipping threshold.
    decay: per-round decay of the radius (paper: 0.998).

  Returns:
    A craft with ``||update|| <= delta_t``; ``info``: ``radius``,
    ``attacker_loss``.
  """
  _check_schedule('delta0', delta0, decay)

  def craft(global_params, updates, weights, malicious, key, round_idx, data):
    del updates, weights, malicious
    radius = projection.decayed_radius(delta0, decay, round_idx)
    params, cm = trainer(global_params, data.x, data.y, data.mask, key,
                         round_idx, radius)
    return (tree_math.tree_sub(params, global_params),
            {'radius': radius, 'attacker_loss': cm.train_loss})

  return craft


def replacement_craft(trainer: Callable, *, delta0: float, decay: float = 1.0,
                      send_delta0: Optional[float] = None) -> Craft:
  """PGD with model replacement: train in ``B(w, delta_t)``, boost, project.

  .. math::
      u = \\Pi_{B_2(0, \\delta'_t)}\\big(\\gamma\\,(w_{mal} - w)\\big), \\qquad
      \\gamma = n_S / n_M

  Args:
    trainer: from :func:`fl_jax.attacks.make_local_trainer`.
    delta0: training radius ``delta_0`` (shrunk a priori, since the update is
      boosted afterwards).
    decay: per-round decay of both radii.
    send_delta0: radius of the boosted update, ``delta'_0`` (e.g. the norm
      clipping threshold); ``None`` sends the boosted update unprojected.

  Returns:
    A craft; ``info``: ``radius``, ``gamma``, ``boosted_norm`` (before the
    final projection), ``attacker_loss``.
  """
  _check_schedule('delta0', delta0, decay)
  if send_delta0 is not None:
    _check_schedule('send_delta0', send_delta0, decay)

  def craft(global_params, updates, weights, malicious, key, round_idx, data):
    del updates
    radius = projection.decayed_radius(delta0, decay, round_idx)
    params, cm = trainer(global_params, data.x, data.y, data.mask, key,
                         round_idx, radius)
    gamma = projection.replacement_factor(weights, malicious)
    boosted = projection.scale_update(tree_math.tree_sub(params, global_params), gamma)
    boosted_norm = tree_math.tree_l2_norm(boosted)
    if send_delta0 is not None:
      boosted = projection.clip_to_l2_ball(
          boosted, projection.decayed_radius(send_delta0, decay, round_idx))
    return boosted, {'radius': radius, 'gamma': gamma,
                     'boosted_norm': boosted_norm,
                     'attacker_loss': cm.train_loss}

  return craft
