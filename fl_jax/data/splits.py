"""The defender's held-out sets, carved from the training set before partitioning.

The certified-FAT defender checks every candidate global model on a
*certification set* (the first ``num_cert`` training points) and a
*validation set* (the next ``num_val``); the remaining points go to the
clients.

References:
  Zizzo et al., "Certified Federated Adversarial Training", 2021, Section 5:
  1000 certification and 5000 validation points for MNIST, 100 and 5000 for
  CIFAR-10.
"""
from typing import Tuple

from fl_jax.data.sources import Dataset


def _check_count(name: str, value) -> int:
  if isinstance(value, bool) or not hasattr(value, '__index__'):
    raise ValueError(f'{name} must be an integer, got {value!r}.')
  value = int(value)
  if value < 0:
    raise ValueError(f'{name} must be non-negative, got {value}.')
  return value


def holdout_split(ds: Dataset, num_cert: int,
                  num_val: int) -> Tuple[Dataset, Dataset, Dataset]:
  """Splits ``ds`` in order into certification, validation and client data.

  ``cert = ds[:num_cert]``, ``val = ds[num_cert:num_cert + num_val]``,
  ``rest = ds[num_cert + num_val:]`` (no shuffling: the paper takes the first
  training points).

  Args:
    ds: a ``Dataset`` with ``N`` examples.
    num_cert: size of the certification set, ``>= 0``.
    num_val: size of the validation set, ``>= 0``.

  Returns:
    ``(cert, val, rest)``, three ``Dataset`` views of ``ds`` with
    ``num_cert``, ``num_val`` and ``N - num_cert - num_val`` examples.

  Raises:
    ValueError: a negative or non-integer size, or
      ``num_cert + num_val > N``.
  """
  num_cert = _check_count('num_cert', num_cert)
  num_val = _check_count('num_val', num_val)
  n = len(ds.y)
  if num_cert + num_val > n:
    raise ValueError(f'num_cert + num_val = {num_cert} + {num_val} = '
                     f'{num_cert + num_val} exceeds the {n} examples of '
                     f'{ds.name!r}.')
  cut = num_cert + num_val

  def part(lo, hi):
    return ds._replace(x=ds.x[lo:hi], y=ds.y[lo:hi])

  return part(0, num_cert), part(num_cert, cut), part(cut, n)
