"""Client partitions of a training set: IID and Dirichlet non-IID.

A partition is a list of ``K`` int64 index arrays, one per client, that
together hold every example index exactly once (each array sorted).

References:
  IID: Zizzo et al., "Certified Federated Adversarial Training", 2021
  (500 clients, each a random partition).
  Dirichlet: Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor
  Federated Learning", NeurIPS 2020, Section 4: ``p_k ~ Dir_K(0.5)`` and a
  ``p_{k,i}`` share of class ``k`` goes to client ``i``.
"""
from typing import List

import numpy as np


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not hasattr(value, '__index__'):
    raise ValueError(f'{name} must be an integer, got {value!r}.')
  value = int(value)
  if value <= 0:
    raise ValueError(f'{name} must be positive, got {value}.')
  return value


def _check_clients(num_clients, num_examples: int) -> int:
  num_clients = _check_positive_int('num_clients', num_clients)
  if num_clients > num_examples:
    raise ValueError(f'num_clients = {num_clients} exceeds the number of '
                     f'examples ({num_examples}); every client needs at least '
                     'one example.')
  return num_clients


def partition_iid(num_examples: int, num_clients: int,
                  seed: int) -> List[np.ndarray]:
  """Splits ``range(num_examples)`` uniformly at random into client shards.

  A random permutation is cut into ``num_clients`` contiguous pieces whose
  sizes differ by at most one (``floor`` or ``ceil`` of ``N / K``).

  Args:
    num_examples: ``N > 0``.
    num_clients: ``K`` with ``0 < K <= N``.
    seed: integer seed for ``np.random.default_rng``.

  Returns:
    ``K`` sorted int64 index arrays partitioning ``range(N)``.

  Raises:
    ValueError: non-positive ``N`` or ``K``, or ``K > N``.
  """
  num_examples = _check_positive_int('num_examples', num_examples)
  num_clients = _check_clients(num_clients, num_examples)
  perm = np.random.default_rng(seed).permutation(num_examples)
  return [np.sort(p) for p in np.array_split(perm, num_clients)]


def partition_dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
                        seed: int, min_size: int = 10,
                        max_tries: int = 100) -> List[np.ndarray]:
  """Label-skewed partition with Dirichlet(alpha) class proportions.

  For every class ``c`` with ``n_c`` examples, draw client proportions
  ``p_c ~ Dir(alpha * 1_K)`` and give client ``i`` the examples of class
  ``c`` in the slice ``[floor(n_c * P_{c,i-1}), floor(n_c * P_{c,i}))`` of a
  random permutation, where ``P_c`` is the cumulative sum of ``p_c``. The
  whole draw is repeated until every client holds ``>= min_size`` examples.
  Small ``alpha`` gives each client few classes; large ``alpha`` approaches
  IID class proportions.

  Args:
    labels: int ``[N]`` class labels (non-negative).
    num_clients: ``K`` with ``0 < K <= N``.
    alpha: Dirichlet concentration, ``> 0`` (paper: 0.5).
    seed: integer seed for ``np.random.default_rng``.
    min_size: minimum examples per client, ``>= 0``; needs
      ``K * min_size <= N``.
    max_tries: number of draws before giving up, ``>= 1``.

  Returns:
    ``K`` sorted int64 index arrays partitioning ``range(N)``.

  Raises:
    ValueError: bad arguments (named in the message) or no draw within
      ``max_tries`` gave every client ``min_size`` examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be a 1-D integer array, got shape '
                     f'{labels.shape} and dtype {labels.dtype}.')
  n = len(labels)
  if n == 0:
    raise ValueError('labels is empty; there is nothing to partition.')
  if labels.min() < 0:
    raise ValueError(f'labels must be non-negative, got {labels.min()}.')
  num_clients = _check_clients(num_clients, n)
  if not np.isfinite(alpha) or alpha <= 0:
    raise ValueError(f'alpha must be a positive finite number, got {alpha}.')
  if isinstance(min_size, bool) or not hasattr(min_size, '__index__'):
    raise ValueError(f'min_size must be an integer, got {min_size!r}.')
  if min_size < 0:
    raise ValueError(f'min_size must be non-negative, got {min_size}.')
  max_tries = _check_positive_int('max_tries', max_tries)
  if num_clients * min_size > n:
    raise ValueError(f'Impossible partition: num_clients * min_size = '
                     f'{num_clients} * {min_size} = {num_clients * min_size} '
                     f'exceeds the {n} examples.')

  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  # Examples of each class, in random order.
  by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
  class_sizes = np.array([len(b) for b in by_class])
  smallest = 0
  for _ in range(max_tries):
    props = rng.dirichlet(np.full(num_clients, float(alpha)), size=len(classes))
    # bounds[c, i] = start of client i's slice of class c; bounds[c, K] = n_c.
    cum = np.cumsum(props, axis=1)
    bounds = np.floor(cum * class_sizes[:, None]).astype(np.int64)
    bounds[:, -1] = class_sizes
    bounds = np.concatenate(
        [np.zeros((len(classes), 1), np.int64), bounds], axis=1)
    bounds = np.maximum.accumulate(bounds, axis=1)
    sizes = (bounds[:, 1:] - bounds[:, :-1]).sum(axis=0)
    smallest = max(smallest, int(sizes.min()))
    if sizes.min() >= min_size:
      return [
          np.sort(np.concatenate(
              [b[bounds[c, i]:bounds[c, i + 1]] for c, b in enumerate(by_class)]
          )).astype(np.int64)
          for i in range(num_clients)
      ]
  raise ValueError(
      f'No Dirichlet partition with alpha = {alpha} gave all '
      f'num_clients = {num_clients} clients at least min_size = {min_size} '
      f'of the {n} examples in max_tries = {max_tries} draws (the best draw '
      f"had a smallest client of {smallest}). Raise alpha or max_tries, or "
      'lower num_clients or min_size.')
