"""Flags that join a launch to a multi-process JAX job (several hosts).

Every process runs the same command with its own ``--process_id``::

  # host 0 (serves the coordinator on port 1234)
  python -m launch.sweep --sweep=... --devices=-1 \
      --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
  # host 1
  python -m launch.sweep --sweep=... --devices=-1 \
      --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=1

On a cluster that JAX recognises (SLURM, Open MPI, Kubernetes, Cloud TPU) use
``--distributed_from_env`` instead. Only process 0 writes files.
"""
from absl import flags

COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 of a multi-process job.')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
FROM_ENV = flags.DEFINE_bool('distributed_from_env', False,
                             'Read the job layout from the cluster environment.')
INIT_TIMEOUT = flags.DEFINE_float('init_timeout', 300.0,
                                  'Seconds to wait for the coordinator before failing.')


def initialize_from_flags() -> str:
  """Calls :func:`fl_jax.simulation.distributed.initialize` with the flags.

  Returns:
    a one-line description of the job for the launch's log.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import distributed  # pylint: disable=g-import-not-at-top
  joined = distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                                  timeout_s=INIT_TIMEOUT.value,
                                  from_environment=FROM_ENV.value)
  where = (f'process {jax.process_index()} of {jax.process_count()}, '
           if joined else '')
  return (f'{where}{jax.local_device_count()} local / {jax.device_count()} '
          f'{jax.devices()[0].platform} devices')
