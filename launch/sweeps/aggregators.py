"""Every aggregation rule on the base config (``arg``: 'smoke' for 2 rules)."""
from launch.sweep_lib import product


def get_sweep(arg: str = ''):
  rules = ['mean', 'median', 'trimmed_mean', 'krum', 'multi_krum', 'geometric_median']
  if arg == 'smoke':
    rules = rules[:2]
  return product(aggregator=rules)
