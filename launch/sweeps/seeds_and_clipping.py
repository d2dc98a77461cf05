"""Norm-difference clipping bounds x seeds: one vectorized program.

Every run differs only in traced settings (``seed``, ``norm_bound``), so
``launch.sweep`` runs all of them as one compiled program. ``arg``: ``smoke``
for 2 seeds x 2 bounds. Command::

  python -m launch.sweep --sweep=launch/sweeps/seeds_and_clipping.py \
      --workdir=workdirs/sweep_ndc
"""
from launch.sweep_lib import product


def get_sweep(arg: str = ''):
  if arg == 'smoke':
    return product(norm_bound=[0.05, 2.0], seed=[0, 1])
  if arg:
    raise ValueError(f'unknown sweep preset {arg!r}; expected "" or "smoke"')
  return product(norm_bound=[0.25, 0.5, 1.0, 2.0], seed=[0, 1, 2, 3])
