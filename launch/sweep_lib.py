"""Sweeps as data: small helpers to build lists of config overrides."""
import importlib.util
import itertools


def product(**axes):
  """All combinations: ``product(a=[1, 2], b=['x'])`` -> 2 override dicts."""
  keys = list(axes)
  return [dict(zip(keys, vals)) for vals in itertools.product(*axes.values())]


def zipped(**axes):
  """Element-wise: ``zipped(a=[1, 2], b=[3, 4])`` -> ``[{a:1,b:3}, {a:2,b:4}]``."""
  lengths = {len(v) for v in axes.values()}
  if len(lengths) != 1:
    raise ValueError(f'zipped axes must have equal lengths, got {lengths}')
  return [dict(zip(axes, vals)) for vals in zip(*axes.values())]


def run_name(overrides) -> str:
  return ','.join(f'{k}={v}' for k, v in sorted(overrides.items())) or 'base'


def load_sweep(spec: str):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_sweep(arg)
