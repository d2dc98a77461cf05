r"""Runs a sweep: one training run per override dict, sequentially.

A sweep file defines ``get_sweep(arg) -> list[dict]`` of config overrides, built
from the small ``product`` / ``zipped`` helpers of ``launch/sweep_lib.py``; each run writes to
``<workdir>/<name>`` where the name joins the overrides. Example::

  python -m launch.sweep --sweep=launch/sweeps/aggregators.py \
      --config=launch/configs/mnist_fedavg.py --workdir=workdirs/sweep_agg
"""
import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from launch.sweep_lib import load_sweep, run_name

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'mnist_fedavg.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Base config.')
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file with get_sweep(arg) (path[:arg]).')
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/sweep', 'Parent output folder.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Only print the runs.')


def main(argv):
  del argv
  if not _SWEEP.value:
    raise app.UsageError('--sweep is required')
  runs = load_sweep(_SWEEP.value)
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top
  results = []
  for overrides in runs:
    cfg = _CONFIG.value.copy_and_resolve_references()
    for k, v in overrides.items():
      if k not in cfg:
        raise ValueError(f'sweep override {k!r} is not a config key')
      cfg[k] = v
    workdir = os.path.join(_WORKDIR.value, run_name(overrides))
    print(f'== {workdir}', flush=True)
    if _DRY_RUN.value:
      continue
    summary = train.train(cfg, workdir)
    results.append({**overrides, **summary})
  if results:
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, 'sweep_results.jsonl'), 'w') as f:
      for r in results:
        f.write(json.dumps(r) + '\n')


if __name__ == '__main__':
  app.run(main)
