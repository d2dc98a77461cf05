"""The edge-case backdoor task of an experiment config (Wang et al. 2020).

``build_edge_task(cfg, pool, test)`` turns the ``edge_*`` keys of a config
into the three things an edge-case experiment needs besides the honest
federation:

* the attacker's data ``D'``: ``edge_num_train`` edge examples labelled
  ``edge_target`` mixed with ``edge_num_clean`` clean examples of the client
  pool (the paper's Task 2: 66 ARDIS 7s + 100 EMNIST images);
* the honest clients' share of the edge examples (the paper's Figure 5):
  the attacker holds a fraction ``edge_attacker_share = p`` of the edge
  examples in the federation and honest clients the rest, *with their true
  label*. The paper splits its edge set ``p / (1 - p)``; here ``D'`` keeps
  its ``edge_num_train`` edge examples for every ``p`` (so that only the
  honest share changes between settings) and honest clients get
  ``round(edge_num_train * (1 - p) / p)`` further candidates (an error if the
  source has too few), appended round-robin to a random order of the honest
  clients (or of the first ``edge_honest_clients`` of them);
* the target task: the edge source's test images labelled ``edge_target``,
  on which ``target_accuracy`` is measured every evaluation.

Edge sources (``edge_source``):

* ``'uci_digits'``: the UCI optical digits shipped inside scikit-learn
  (43 writers, scanned at 32x32 and sub-sampled to 8x8 by the UCI authors),
  brought to MNIST's format (:mod:`fl_jax.data.edge_sets`). Offline.
* ``'ardis'``: ARDIS DATASET_IV (Swedish 19th/20th-century church records),
  read from ``edge_dir`` (the paper's Task 2 source).
* ``'mnist'``: ordinary MNIST digits of the client pool (``edge_digit``),
  taken out of the honest clients: the *in-distribution* backdoor the paper
  compares edge cases with. Target task: the MNIST test digits.

Host-side NumPy, run once before training; deterministic from
``data_seed``.
"""
from typing import Any, Mapping, NamedTuple

import numpy as np

from fl_jax import data as data_lib

EDGE_ATTACKS = ('edge_blackbox', 'edge_pgd', 'edge_replacement')
EDGE_SOURCES = ('uci_digits', 'ardis', 'mnist')


def is_edge_attack(cfg: Mapping[str, Any]) -> bool:
  return cfg.get('attack', '') in EDGE_ATTACKS


def has_edge_task(cfg: Mapping[str, Any]) -> bool:
  """An edge-case attack, or no attack in a config with an edge set.

  The unattacked runs of an edge-case config measure the target task too
  (the baseline of the paper's figures).
  """
  return is_edge_attack(cfg) or (not cfg.get('attack') and bool(cfg.get('edge_source')))


class EdgeTask(NamedTuple):
  """The edge-case task of a config (NumPy arrays).

  Attributes:
    attack_x: float32 ``[n', H, W, C]``, the attacker's ``D'``.
    attack_y: int32 ``[n']`` (edge examples carry ``edge_target``).
    attack_is_edge: bool ``[n']``.
    target_x: float32 ``[T, H, W, C]`` target-task test inputs.
    target_y: int32 ``[T]``, all ``edge_target``.
    honest_x: float32 ``[h, H, W, C]`` edge examples held by honest clients.
    honest_y: int32 ``[h]``, their true label ``edge_digit``.
    pool: the client pool with in-distribution edge examples removed.
    description: one line for logs.
    honest_clients: int ``[h]``, the client holding each honest edge example
      (set by :func:`fl_jax.simulation.train.partition_data`), or ``None``.
  """
  attack_x: np.ndarray
  attack_y: np.ndarray
  attack_is_edge: np.ndarray
  target_x: np.ndarray
  target_y: np.ndarray
  honest_x: np.ndarray
  honest_y: np.ndarray
  pool: Any
  description: str
  honest_clients: Any = None


def _split_share(cfg, num_candidates: int, rng) -> tuple:
  """``(attacker_idx, honest_idx)`` into the edge candidates (module docstring)."""
  p, n_att = cfg['edge_attacker_share'], cfg['edge_num_train']
  n_hon = int(np.floor(n_att * (1 - p) / p + 0.5))
  if n_att + n_hon > num_candidates:
    raise ValueError(
        f"edge_attacker_share={p!r} with edge_num_train={n_att} needs {n_att + n_hon} edge "
        f"examples ({n_hon} at honest clients), but edge_source={cfg['edge_source']!r} "
        f'has {num_candidates}; lower edge_num_train or raise edge_attacker_share')
  chosen = rng.permutation(num_candidates)[:n_att + n_hon]
  if n_hon == 0:
    return np.sort(chosen), chosen[:0]
  a, h = data_lib.honest_edge_split(chosen.size, n_att / chosen.size,
                                    seed=int(rng.integers(2**31)))
  return np.sort(chosen[a]), np.sort(chosen[h])


def check_edge_config(cfg: Mapping[str, Any]) -> None:
  """Raises ValueError naming a bad ``edge_*`` value."""
  if cfg['edge_source'] not in EDGE_SOURCES:
    raise ValueError(f"unknown edge_source {cfg['edge_source']!r}; expected one of "
                     f'{EDGE_SOURCES}')
  p = cfg['edge_attacker_share']
  if not (isinstance(p, (int, float)) and 0 < p <= 1):
    raise ValueError(f'edge_attacker_share must be in (0, 1] (the share p of the edge '
                     f'examples the attacker holds), got {p!r}')
  for k in ('edge_num_train', 'edge_num_clean', 'edge_num_test'):
    if not isinstance(cfg[k], int) or cfg[k] < 0:
      raise ValueError(f'{k} must be a non-negative int, got {cfg[k]!r}')
  if cfg['edge_num_train'] + cfg['edge_num_clean'] < 1:
    raise ValueError('edge_num_train + edge_num_clean must be >= 1 (the attacker '
                     'needs data)')
  for k in ('edge_digit', 'edge_target'):
    if not isinstance(cfg[k], int) or cfg[k] < 0:
      raise ValueError(f'{k} must be a class index, got {cfg[k]!r}')
  if cfg['edge_digit'] == cfg['edge_target']:
    raise ValueError(f"edge_target ({cfg['edge_target']}) must differ from edge_digit")


def _source_images(cfg, pool, test):
  """``(train candidates, test images, pool index of each candidate or None, name)``."""
  digit = cfg['edge_digit']
  if cfg['edge_source'] == 'mnist':
    idx = np.flatnonzero(pool.y == digit)
    return pool.x[idx], test.x[test.y == digit], idx, f'MNIST {digit}s (in-distribution)'
  src = data_lib.load_edge_source(cfg['edge_source'], data_dir=cfg['edge_dir'] or None,
                                  digit=digit)
  if src.train_x.shape[1:] != pool.x.shape[1:]:
    raise ValueError(f"edge_source {cfg['edge_source']!r} gives images of shape "
                     f'{src.train_x.shape[1:]}, the data set has {pool.x.shape[1:]}')
  return src.train_x, src.test_x, None, src.name


def build_edge_task(cfg: Mapping[str, Any], pool, test) -> EdgeTask:
  """The edge-case task of ``cfg`` (see the module docstring).

  Args:
    cfg: a config with the ``edge_*`` keys (``launch/configs/edge_case.py``).
    pool: the clients' data (``Dataset``) before partitioning.
    test: the test set.

  Returns:
    :class:`EdgeTask`; partition ``task.pool`` over the clients and add
    ``honest_x`` / ``honest_y`` to honest clients with :func:`add_to_clients`.
  """
  check_edge_config(cfg)
  for k in ('edge_digit', 'edge_target'):
    if cfg[k] >= pool.num_classes:
      raise ValueError(f'{k}={cfg[k]} is not a class of {pool.name} '
                       f'({pool.num_classes} classes)')
  rng = np.random.default_rng([cfg['data_seed'], 7919])
  cand, target_x, pool_idx, name = _source_images(cfg, pool, test)
  a_idx, h_idx = _split_share(cfg, cand.shape[0], rng)
  if pool_idx is not None:  # in-distribution: the chosen digits leave the honest pool
    keep = np.setdiff1d(np.arange(pool.y.size), pool_idx[np.concatenate([a_idx, h_idx])])
    pool = pool._replace(x=pool.x[keep], y=pool.y[keep])
  n_edge = a_idx.size
  tgt = cfg['edge_target']
  from fl_jax import attacks  # pylint: disable=g-import-not-at-top
  dx, dy, is_edge = attacks.mix_edge_and_clean(
      cand[a_idx], np.full(a_idx.size, tgt, np.int32), pool.x, pool.y,
      num_edge=n_edge, num_clean=cfg['edge_num_clean'], seed=int(rng.integers(2**31)))
  if cfg['edge_num_test']:
    if cfg['edge_num_test'] > target_x.shape[0]:
      raise ValueError(f"edge_num_test={cfg['edge_num_test']} exceeds the "
                       f'{target_x.shape[0]} test images of {name}')
    target_x = target_x[:cfg['edge_num_test']]
  if target_x.shape[0] == 0:
    raise ValueError(f'{name} has no test images for the target task')
  desc = (f"{name}: D' = {n_edge} edge (label {tgt}) + {int((~is_edge).sum())} clean; "
          f'{h_idx.size} edge examples with their true label at honest clients; '
          f'target task {target_x.shape[0]} test images')
  return EdgeTask(dx, dy, is_edge, np.asarray(target_x, np.float32),
                  np.full(target_x.shape[0], tgt, np.int32),
                  np.asarray(cand[h_idx], np.float32),
                  np.full(h_idx.size, cfg['edge_digit'], np.int32), pool, desc)


def add_to_clients(clients: data_lib.ClientData, x, y, recipients, seed: int):
  """Appends examples ``x[h], y[h]`` to the clients ``recipients``, round-robin.

  The recipients are visited in a random order (``seed``); example ``i`` goes
  to the ``(i mod len)``-th of them, after its own examples. The padded width
  grows if needed.

  Returns:
    ``(ClientData, owner)``: the new client data and the client of each example.
  """
  x, y = np.asarray(x), np.asarray(y)
  if x.shape[0] == 0:
    return clients, np.zeros(0, np.int64)
  recipients = np.asarray(recipients)
  if recipients.size == 0:
    raise ValueError('no honest client to hold the honest share of the edge examples')
  order = np.random.default_rng(seed).permutation(recipients)
  owner = order[np.arange(x.shape[0]) % order.size]
  extra = np.bincount(owner, minlength=clients.x.shape[0])
  counts = np.asarray(clients.num_examples)
  width = max(clients.x.shape[1], int((counts + extra).max()))
  pad = width - clients.x.shape[1]

  def widen(a):
    return np.pad(np.asarray(a), [(0, 0), (0, pad)] + [(0, 0)] * (np.ndim(a) - 2))

  cx, cy, cm = widen(clients.x), widen(clients.y), widen(clients.mask)
  # Example i lands after its owner's examples and the earlier examples it got.
  by_owner = np.argsort(owner, kind='stable')
  first = np.searchsorted(owner[by_owner], owner[by_owner])
  rank = np.empty_like(owner)
  rank[by_owner] = np.arange(owner.size) - first
  slot = counts[owner] + rank
  cx[owner, slot], cy[owner, slot], cm[owner, slot] = x, y, True
  return data_lib.ClientData(cx, cy, cm, (counts + extra).astype(np.int32)), owner
