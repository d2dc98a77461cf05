"""Who attacks when: malicious pools, fixed frequency, activation rules.

A participation pattern answers three questions inside the jitted round,
without any Python branch per client:

* which of the ``K`` clients are malicious: a fixed boolean mask ``[K]``
  (host constant, chosen once with a seed);
* how the ``m`` clients of a round are sampled: ``None`` keeps the round's
  uniform sampling, otherwise ``sample(key, round) -> ids[m]``;
* whether the attack fires this round: ``active(malicious[m], round) ->
  bool``, where ``malicious[m] = is_malicious[ids]`` marks the sampled
  malicious clients.

Two patterns of the papers are provided:

* **fixed pool** (random sampling): a pool of ``f`` malicious clients among
  ``K``; they attack only when the uniform sampler happens to pick them. The
  certified-FAT attacker (175 of 500 clients) also waits for near-convergence
  and for at least 3 of the 5 sampled clients to be malicious:
  ``active = (round >= R) & (sum(malicious) >= k)``.
* **fixed frequency**: an attacker is forced into every ``F``-th round
  (edge-case paper: ``F = 10``) and malicious clients are kept out of every
  other round, so the attack happens exactly when ``round % F == offset``.

References:
  Zizzo et al., "Certified Federated Adversarial Training", NFFL 2021,
  Sections 2.3 and 5.
  Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor Federated
  Learning", NeurIPS 2020, Section 4 ("Participating patterns of
  attackers").
"""
import numbers
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fl_jax.types import Array, PRNGKey, is_traced


class Participation(NamedTuple):
  """A participation pattern (see the module docstring).

  Attributes:
    is_malicious: NumPy bool ``[K]``, true for the malicious clients.
    sample: ``None`` (the round's uniform sampling) or
      ``sample(key, round) -> ids[m]`` (int32, distinct).
    active: ``active(malicious[m], round) -> bool`` scalar: the attack fires
      this round (``malicious`` marks the sampled malicious clients).
  """
  is_malicious: np.ndarray
  sample: Optional[Callable[[PRNGKey, Array], Array]]
  active: Callable[[Array, Array], Array]


def _check_int(name, value, minimum):
  if is_traced(value) and jnp.issubdtype(value.dtype, jnp.integer):
    return  # a per-run setting of a vectorized sweep, checked on the host
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{name} must be an int, got {value!r}')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value!r}')
  return int(value)


def malicious_pool(num_clients: int, num_malicious: int, seed: int) -> np.ndarray:
  """A fixed random set of malicious clients as a boolean mask.

  Args:
    num_clients: ``K >= 1``.
    num_malicious: ``0 <= f <= K`` (certified-FAT: 175 of 500).
    seed: NumPy seed of the choice.

  Returns:
    NumPy bool ``[K]`` with exactly ``f`` true entries.
  """
  _check_int('num_clients', num_clients, 1)
  _check_int('num_malicious', num_malicious, 0)
  if num_malicious > num_clients:
    raise ValueError(f'num_malicious ({num_malicious}) must be <= num_clients '
                     f'({num_clients})')
  ids = np.random.default_rng(seed).choice(num_clients, num_malicious,
                                           replace=False)
  mask = np.zeros(num_clients, bool)
  mask[ids] = True
  return mask


def sampled_malicious(is_malicious, client_ids: Array) -> Array:
  """``malicious[j] = is_malicious[client_ids[j]]``: bool ``[m]``."""
  return jnp.asarray(is_malicious, bool)[client_ids]


def activation_rule(start_round: int = 0, min_malicious: int = 1) -> Callable:
  """``active(malicious[m], round) = (round >= R) & (sum(malicious) >= k)``.

  Args:
    start_round: ``R >= 0``, the first round the attacker may act in (e.g.
      once the model has nearly converged).
    min_malicious: ``k >= 1`` malicious clients that must be sampled together
      (certified-FAT: 3 of 5).

  Returns:
    The jit-friendly predicate.
  """
  _check_int('start_round', start_round, 0)
  _check_int('min_malicious', min_malicious, 1)

  def active(malicious: Array, round_idx) -> Array:
    count = jnp.sum(jnp.asarray(malicious, jnp.int32))
    return (jnp.asarray(round_idx) >= start_round) & (count >= min_malicious)

  return active


def fixed_pool(num_clients: int, num_malicious: int, seed: int, *,
               start_round: int = 0, min_malicious: int = 1,
               is_malicious: Optional[np.ndarray] = None) -> Participation:
  """Random sampling from a fixed pool of malicious clients.

  Clients are sampled uniformly by the round; the attack fires when
  ``round >= start_round`` and at least ``min_malicious`` of the sampled
  clients are malicious.

  Args:
    num_clients: ``K``.
    num_malicious: ``f`` malicious clients, chosen with ``seed``
      (ignored if ``is_malicious`` is given).
    seed: seed of the choice of the pool.
    start_round: first round the attacker acts in.
    min_malicious: malicious clients needed in one round (certified-FAT: 3).
    is_malicious: optional explicit bool ``[K]`` mask.

  Returns:
    A :class:`Participation` with ``sample=None``.
  """
  if is_malicious is None:
    is_malicious = malicious_pool(num_clients, num_malicious, seed)
  else:
    is_malicious = np.asarray(is_malicious)
    if is_malicious.dtype != bool or is_malicious.shape != (num_clients,):
      raise ValueError(f'is_malicious must be bool [{num_clients}], got '
                       f'{is_malicious.dtype} {is_malicious.shape}')
  if min_malicious > max(int(is_malicious.sum()), 1):
    raise ValueError(f'min_malicious ({min_malicious}) exceeds the pool of '
                     f'{int(is_malicious.sum())} malicious clients')
  return Participation(is_malicious, None,
                       activation_rule(start_round, min_malicious))


def fixed_frequency(num_clients: int, clients_per_round: int, frequency: int, *,
                    attacker_ids: Sequence[int] = (0,), offset: int = 0,
                    start_round: int = 0) -> Participation:
  """An attacker forced into every ``F``-th round, and into no other round.

  Round ``r`` is an attack round iff ``r >= start_round`` and
  ``r % F == offset % F``. Every round samples ``m`` distinct honest clients
  uniformly; in an attack round one uniformly drawn slot is given to the
  attacker ``attacker_ids[(r // F) % len(attacker_ids)]`` (attackers take
  turns). Malicious clients never enter a non-attack round.

  Args:
    num_clients: ``K``.
    clients_per_round: ``m``, with ``m <= K - len(attacker_ids)``.
    frequency: ``F >= 1`` (edge-case paper: 10).
    attacker_ids: the malicious client ids (distinct, in ``[0, K)``).
    offset: attack rounds are those with ``r % F == offset % F``.
    start_round: no attack before this round.

  Returns:
    A :class:`Participation` with a ``sample`` function and
    ``active = any(malicious)``.
  """
  _check_int('num_clients', num_clients, 1)
  _check_int('clients_per_round', clients_per_round, 1)
  _check_int('frequency', frequency, 1)
  _check_int('offset', offset, 0)
  _check_int('start_round', start_round, 0)
  attackers = np.asarray(attacker_ids)
  if attackers.ndim != 1 or attackers.size == 0 or not np.issubdtype(
      attackers.dtype, np.integer):
    raise ValueError(f'attacker_ids must be a non-empty list of ints, got '
                     f'{attacker_ids!r}')
  if len(set(attackers.tolist())) != attackers.size or attackers.min() < 0 or (
      attackers.max() >= num_clients):
    raise ValueError(f'attacker_ids must be distinct ids in [0, {num_clients}), '
                     f'got {attacker_ids!r}')
  is_malicious = np.zeros(num_clients, bool)
  is_malicious[attackers] = True
  honest = np.flatnonzero(~is_malicious).astype(np.int32)
  if clients_per_round > honest.size:
    raise ValueError(f'clients_per_round ({clients_per_round}) exceeds the '
                     f'{honest.size} honest clients')
  m = clients_per_round
  attackers = attackers.astype(np.int32)

  def sample(key: PRNGKey, round_idx) -> Array:
    k_ids, k_pos = jax.random.split(key)
    ids = jax.random.choice(k_ids, jnp.asarray(honest), (m,), replace=False)
    r = jnp.asarray(round_idx, jnp.int32)
    attack_round = (r >= start_round) & (r % frequency == offset % frequency)
    attacker = jnp.asarray(attackers)[(r // frequency) % attackers.size]
    pos = jax.random.randint(k_pos, (), 0, m)
    return ids.at[pos].set(jnp.where(attack_round, attacker, ids[pos]))

  def active(malicious: Array, round_idx) -> Array:
    del round_idx
    return jnp.any(malicious)

  return Participation(is_malicious, sample, active)


def attack_rounds(frequency: int, rounds: int, *, offset: int = 0,
                  start_round: int = 0) -> np.ndarray:
  """Rounds ``< rounds`` in which :func:`fixed_frequency` attacks (host helper)."""
  r = np.arange(rounds)
  return r[(r >= start_round) & (r % frequency == offset % frequency)]
