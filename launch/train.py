r"""Runs a federated training experiment.

  python -m launch.train --workdir=workdirs/mnist_fedavg
  python -m launch.train --config=launch/configs/mnist_fedavg.py:smoke \
      --config.rounds=10 --workdir=/tmp/smoke
  python -m launch.train --workdir=workdirs/mnist_fedavg --resume

Across hosts (the flags of ``launch/hosts.py``; every process runs the same
command with its own ``--process_id``; only process 0 writes)::

  python -m launch.train --config.client_devices=-1 --config.clients_per_round=1000 \
      --config.num_clients=10000 --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0

Every config key can be overridden as ``--config.KEY=VALUE``; see
``launch/configs/mnist_fedavg.py`` for the keys and their meaning.

Writes ``config.json``, ``metrics.jsonl`` with TensorBoard event files beside
it (``tensorboard --logdir WORKDIR``), ``summary.json`` and ``checkpoint.npz``
to the workdir and prints a progress line per evaluation (metrics, rounds/s,
time left). ``--resume`` refuses a config that differs from the stored
``config.json`` outside ``rounds``, ``eval_every`` and ``checkpoint_every``
unless ``--resume_allow=KEY,...`` names the keys.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from launch import hosts

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'mnist_fedavg.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG,
                                          'Experiment config file (with :preset).')
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/mnist_fedavg', 'Output folder.')
_RESUME = flags.DEFINE_bool('resume', False,
                            'Continue from workdir/checkpoint.npz if present.')
_RESUME_ALLOW = flags.DEFINE_list(
    'resume_allow', [], 'Config keys --resume may change besides rounds, eval_every and '
    'checkpoint_every (the run then continues with the new values).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  job = hosts.initialize_from_flags()
  import jax  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import distributed  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import train  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1 and _CONFIG.value.client_devices == 1:
    raise app.UsageError('a multi-process run splits the sampled clients over the devices of '
                         'every process: set --config.client_devices=-1 (or a device count)')
  main_process = distributed.is_main_process()
  log = (lambda m: print(m, file=sys.stderr, flush=True)) if main_process else (lambda m: None)
  log(f'devices: {job}')
  summary = train.train(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value,
                        resume_allow=tuple(_RESUME_ALLOW.value), log=log)
  if main_process:
    print({k: summary[k] for k in ('round', 'test_accuracy', 'wall_seconds') if k in summary})


if __name__ == '__main__':
  app.run(main)
