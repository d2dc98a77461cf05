"""Client data padded to one array shape with a validity mask.

Clients hold different numbers of examples. Stacking them as
``x[K, n_max, H, W, C]`` with ``mask[K, n_max]`` turns the client data into a
single pytree that ``jax.vmap`` can map over the client axis; padded slots
hold zeros and ``mask == False``, and client code must weight every
per-example term by the mask (cf. fedjax's padded ``ClientBlock``).
"""
from typing import NamedTuple, Optional, Sequence

import numpy as np

from fl_jax.data import partition as partition_lib
from fl_jax.data.sources import Dataset


class ClientData(NamedTuple):
  """All clients' examples, stacked and padded.

  Attributes:
    x: float32 ``[K, n_max, H, W, C]`` images (zeros where padded).
    y: int32 ``[K, n_max]`` labels (zeros where padded).
    mask: bool ``[K, n_max]``, True for real examples; client ``k``'s real
      examples are the first ``num_examples[k]`` slots.
    num_examples: int32 ``[K]`` real examples per client.
  """
  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray
  num_examples: np.ndarray


def pad_clients(ds: Dataset, index_lists: Sequence[np.ndarray],
                n_max: Optional[int] = None) -> ClientData:
  """Gathers each client's examples from ``ds`` and pads them to ``n_max``.

  Args:
    ds: the data the indices refer to (``N`` examples).
    index_lists: ``K >= 1`` integer index arrays into ``ds`` (e.g. from
      ``partition_iid`` or ``partition_dirichlet``), kept in the given order.
    n_max: padded length; defaults to the largest client. Must be ``>= 1``
      and at least the largest client.

  Returns:
    ``ClientData`` with ``x[K, n_max, H, W, C]``, ``y[K, n_max]``,
    ``mask[K, n_max]`` and ``num_examples[K]``.

  Raises:
    ValueError: no clients, indices out of ``[0, N)`` or not integers, or
      ``n_max`` smaller than a client.
  """
  if len(index_lists) == 0:
    raise ValueError('index_lists is empty; need at least one client.')
  n = len(ds.y)
  lists = []
  for k, idx in enumerate(index_lists):
    idx = np.asarray(idx)
    if idx.size == 0:
      idx = idx.astype(np.int64).reshape(0)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
      raise ValueError(f'index_lists[{k}] must be a 1-D integer array, got '
                       f'shape {idx.shape} and dtype {idx.dtype}.')
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise ValueError(f'index_lists[{k}] holds indices in [{idx.min()}, '
                       f'{idx.max()}], outside [0, {n}) for {ds.name!r}.')
    lists.append(idx)
  sizes = np.array([len(i) for i in lists], np.int32)
  largest = int(sizes.max())
  if n_max is None:
    n_max = max(largest, 1)
  elif isinstance(n_max, bool) or not hasattr(n_max, '__index__'):
    raise ValueError(f'n_max must be an integer, got {n_max!r}.')
  elif n_max < 1 or n_max < largest:
    k = int(sizes.argmax())
    raise ValueError(f'n_max = {n_max} is smaller than client {k}, which has '
                     f'{largest} examples (n_max must be >= 1 and >= the '
                     'largest client).')
  n_max = int(n_max)
  num_clients = len(lists)
  mask = np.arange(n_max)[None, :] < sizes[:, None]
  flat = np.concatenate(lists).astype(np.int64)
  x = np.zeros((num_clients, n_max) + ds.x.shape[1:], np.float32)
  y = np.zeros((num_clients, n_max), np.int32)
  # Boolean assignment fills the True slots in row-major order, i.e. client 0
  # first, matching the order of `flat`.
  x[mask] = ds.x[flat]
  y[mask] = ds.y[flat]
  return ClientData(x=x, y=y, mask=mask, num_examples=sizes)


def make_federated(ds: Dataset, num_clients: int, partition: str = 'iid',
                   alpha: float = 0.5, seed: int = 0, min_size: int = 10,
                   n_max: Optional[int] = None) -> ClientData:
  """Partitions ``ds`` over ``num_clients`` clients and pads the result.

  Args:
    ds: the clients' data (carve held-out sets off first with
      ``holdout_split``).
    num_clients: ``K`` with ``0 < K <= N``.
    partition: ``'iid'`` (``partition_iid``) or ``'dirichlet'``
      (``partition_dirichlet``).
    alpha: Dirichlet concentration (``'dirichlet'`` only).
    seed: partition seed.
    min_size: minimum examples per client (``'dirichlet'`` only).
    n_max: padded length (default: the largest client).

  Returns:
    ``ClientData`` with ``K`` clients.

  Raises:
    ValueError: unknown ``partition`` or a bad argument of the partition.
  """
  if partition == 'iid':
    lists = partition_lib.partition_iid(len(ds.y), num_clients, seed)
  elif partition == 'dirichlet':
    lists = partition_lib.partition_dirichlet(ds.y, num_clients, alpha, seed,
                                              min_size=min_size)
  else:
    raise ValueError(f"Unknown partition {partition!r}; valid: 'iid', "
                     "'dirichlet'.")
  return pad_clients(ds, lists, n_max=n_max)


def label_histogram(client_data: ClientData, num_classes: int) -> np.ndarray:
  """Counts each client's real (unmasked) examples per class.

  Args:
    client_data: ``ClientData`` (NumPy or JAX arrays) with ``K`` clients.
    num_classes: ``C >= 1``.

  Returns:
    int64 ``[K, C]`` with entry ``[k, c] = #{j : mask[k, j], y[k, j] = c}``.

  Raises:
    ValueError: ``num_classes < 1`` or a real label outside ``[0, C)``.
  """
  if isinstance(num_classes, bool) or not hasattr(num_classes, '__index__') \
      or num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer, got '
                     f'{num_classes!r}.')
  y = np.asarray(client_data.y)
  mask = np.asarray(client_data.mask).astype(bool)
  rows = np.broadcast_to(np.arange(y.shape[0])[:, None], y.shape)[mask]
  labels = y[mask]
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'Labels span [{labels.min()}, {labels.max()}], outside '
                     f'[0, {num_classes}) for num_classes = {num_classes}.')
  counts = np.zeros((y.shape[0], int(num_classes)), np.int64)
  np.add.at(counts, (rows, labels), 1)
  return counts
