r"""Runs a sweep: one training run per override dict, vectorized by default.

A sweep file defines ``get_sweep(arg) -> list[dict]`` of config overrides, built
from the small ``product`` / ``zipped`` helpers of ``launch/sweep_lib.py``. Runs
that differ only in traced settings (seeds, learning rate, clipping bound, DP
noise, ...; ``fl_jax.simulation.batch.TRACED_KEYS``) share one compiled
program whose runs axis is a ``jax.vmap``; runs that differ in a shape or in
the code (model, rule, clients per round, ...) form separate groups. Example::

  python -m launch.sweep --sweep=launch/sweeps/seeds_and_clipping.py \
      --config=launch/configs/mnist_fedavg.py --workdir=workdirs/sweep_ndc
  python -m launch.sweep --sweep=launch/sweeps/seeds_and_clipping.py:smoke \
      --config=launch/configs/mnist_fedavg.py:smoke --workdir=/tmp/sweep --resume

Writes:

* ``<workdir>/<run name>/`` -- each run's ``config.json``, ``metrics.jsonl``,
  ``rounds.jsonl`` (with an attack or a defender), ``summary.json`` and
  ``checkpoint.npz``, as ``launch.train`` writes them;
* ``<workdir>/sweep_results.jsonl`` -- one line per run: its name, group,
  overrides and final metrics;
* ``<workdir>/sweep_summary.json`` and ``sweep_summary.png`` -- the final
  ``--metric`` per setting (the overrides without the seeds), mean and spread
  over seeds;
* ``<workdir>/_batches/<group>/batch_checkpoint.npz`` -- each group's whole
  batch after every block; ``--resume`` continues a killed sweep from them
  to the same result.

``--novectorize`` runs the same runs one after another (``launch.train``'s
loop), for comparison. ``--devices=D`` splits each group's runs over ``D``
devices (a ``'runs'`` mesh; ``-1``: all); with the flags of ``launch/hosts.py``
(``--coordinator_address``, ``--num_processes``, ``--process_id``) the mesh
spans several processes or hosts, each running the same command, and only
process 0 writes.
"""
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from launch import hosts
from launch.sweep_lib import load_sweep, run_sweep

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'mnist_fedavg.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Base config.')
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file with get_sweep(arg) (path[:arg]).')
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/sweep', 'Parent output folder.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Only print the runs and their groups.')
_VECTORIZE = flags.DEFINE_bool('vectorize', True,
                               'Run each group as one vectorized program (else one by one).')
_RESUME = flags.DEFINE_bool('resume', False, 'Continue a killed sweep from its checkpoints.')
_BLOCK_EVALS = flags.DEFINE_integer('block_evals', 4,
                                    'Evaluations (of eval_every rounds each) per dispatch.')
_METRIC = flags.DEFINE_string('metric', 'test_accuracy', 'Final metric of the summary plot.')
_RUNS_CHUNK = flags.DEFINE_integer(
    'runs_chunk', 0, 'Runs of a group vmapped together; the chunks run one after another in '
    'the program (0: by backend, 1 on CPU, all runs on accelerators or with --devices).')
_DEVICES = flags.DEFINE_integer('devices', 1, 'Devices to split the runs of a group over '
                                '(a "runs" mesh; -1: all).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _SWEEP.value:
    raise app.UsageError('--sweep is required')
  job = hosts.initialize_from_flags()
  import jax  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import distributed  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1 and (_DEVICES.value == 1 or not _VECTORIZE.value):
    raise app.UsageError('a multi-process sweep splits the runs over the devices of every '
                         'process: use --devices=-1 (or a device count) and --vectorize')
  main_process = distributed.is_main_process()
  log = (lambda m: print(m, flush=True)) if main_process else (lambda m: None)
  log(f'devices: {job}')
  runs = load_sweep(_SWEEP.value)
  _, _, _, table = run_sweep(_CONFIG.value, runs, _WORKDIR.value, vectorize=_VECTORIZE.value,
                             resume=_RESUME.value, block_evals=_BLOCK_EVALS.value,
                             metric=_METRIC.value, dry_run=_DRY_RUN.value,
                             devices=_DEVICES.value, runs_chunk=_RUNS_CHUNK.value,
                             log=log)
  if table is None or not main_process:
    return
  for name, row in table.items():
    print(f'{name or "base"}: {_METRIC.value} {row["mean"]:.4f} '
          f'(min {row["min"]:.4f}, max {row["max"]:.4f}, n={row["n"]})', flush=True)


if __name__ == '__main__':
  app.run(main)
