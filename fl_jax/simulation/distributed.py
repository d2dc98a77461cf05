"""Several devices and several hosts, through JAX's own runtime.

fl_jax never schedules work across devices itself: a program is written for one
device and its arrays are given a ``jax.sharding.NamedSharding`` over a device
mesh; XLA partitions the program and inserts the collectives. Two mesh axes are
used:

* ``'runs'`` -- the runs of a vectorized sweep (``fl_jax.simulation.batch``):
  runs never communicate, so the partitioned program has no collective;
* ``'clients'`` -- the sampled clients of one round (``make_round_fn(...,
  client_sharding=...)``): each device trains ``m / D`` clients and the
  aggregator reduces over the split client axis (see ``docs/sweeps.md`` for
  what each rule moves between devices), and held-out points of the defender
  split the same way.

Across hosts, :func:`initialize` starts ``jax.distributed`` (one process per
host, or per accelerator) before any array is made; ``jax.devices()`` then lists
every process's devices, a mesh spans them all, and every process runs the same
program on its own shards. :func:`to_host` brings a (sharded) result back to
every process and :func:`is_main_process` says which one writes files.
"""
import os
import socket
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np

RUNS_AXIS = 'runs'
CLIENTS_AXIS = 'clients'


def _parse_address(address: str) -> tuple:
  host, sep, port = str(address).rpartition(':')
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f'coordinator_address={address!r}: expected "host:port" with a '
                     'port in 1..65535, e.g. "10.0.0.1:1234"')
  return host, int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once ``address`` accepts a TCP connection; raises after ``timeout_s``.

  ``jax.distributed.initialize`` aborts the whole process (no Python
  exception) when a non-coordinator process cannot reach the coordinator, so
  the address is tried here first.

  Raises:
    ConnectionError: naming the address and the timeout.
  """
  host, port = _parse_address(address)
  deadline = time.monotonic() + timeout_s
  last = None
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, max(timeout_s, 0.1))):
        return
    except OSError as e:
      last = e
    if time.monotonic() >= deadline:
      raise ConnectionError(
          f'the jax.distributed coordinator at {address} is unreachable after '
          f'{timeout_s:g} s ({last}); start process 0 first, check the address and port, '
          'or raise the timeout (--init_timeout)')
    time.sleep(0.2)


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, timeout_s: float = 300.0,
               from_environment: bool = False,
               local_device_ids: Optional[Sequence[int]] = None) -> bool:
  """Joins this process to a multi-process JAX job (``jax.distributed``).

  Call it once per process, before JAX makes any array. Either give the three
  values (as the launch flags ``--coordinator_address``, ``--num_processes``,
  ``--process_id`` do), or set ``from_environment`` to let JAX read them from
  the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU; see
  ``jax.distributed.initialize``). With none of them, or ``num_processes=1``,
  nothing happens: a single-process run.

  On CPU, cross-process collectives use gloo (set here, since it must be set
  before the backend starts).

  Args:
    coordinator_address: ``"host:port"`` of process 0 (it serves there).
    num_processes: processes in the job, ``>= 1``.
    process_id: this process, in ``[0, num_processes)``.
    timeout_s: how long to wait for the coordinator (and JAX's own
      registration) before failing with an error.
    from_environment: take the values from the cluster environment.
    local_device_ids: the local devices this process uses (default: all).

  Returns:
    True if a multi-process job was joined.

  Raises:
    ValueError: a missing value, a process id out of range, a bad address.
    ConnectionError: the coordinator is unreachable within ``timeout_s``.
  """
  if not timeout_s > 0:
    raise ValueError(f'timeout_s={timeout_s!r}: must be > 0 seconds')
  if from_environment:
    if any(v is not None for v in (coordinator_address, num_processes, process_id)):
      raise ValueError('give either the coordinator address / process count / process id '
                       'or from_environment=True, not both')
    _cpu_collectives()
    jax.distributed.initialize(initialization_timeout=int(np.ceil(timeout_s)),
                               local_device_ids=local_device_ids)
    return True
  if coordinator_address is None and num_processes is None and process_id is None:
    return False
  if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
    raise ValueError(f'num_processes={num_processes!r}: must be an int >= 1')
  if num_processes == 1 and coordinator_address is None and process_id in (None, 0):
    return False
  if (isinstance(process_id, bool) or not isinstance(process_id, int)
      or not 0 <= process_id < num_processes):
    raise ValueError(f'process_id={process_id!r}: must be an int in [0, {num_processes}) '
                     f'for num_processes={num_processes}')
  if coordinator_address is None:
    raise ValueError(f'num_processes={num_processes} needs a coordinator_address '
                     '("host:port" of process 0)')
  _parse_address(coordinator_address)
  if process_id != 0:
    wait_for_coordinator(coordinator_address, timeout_s)
  _cpu_collectives()
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id,
                             initialization_timeout=int(np.ceil(timeout_s)),
                             local_device_ids=local_device_ids)
  return True


def _cpu_collectives() -> None:
  """Selects gloo for cross-process collectives on CPU (JAX's CPU default has none)."""
  platforms = os.environ.get('JAX_PLATFORMS', '') or str(jax.config.jax_platforms or '')
  if platforms == '' or platforms.startswith('cpu'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def is_main_process() -> bool:
  """True on process 0, the one that writes files (always True on one host)."""
  return jax.process_index() == 0


def to_host(tree: Any) -> Any:
  """NumPy copies of every leaf of ``tree``, gathered from all processes.

  A leaf sharded over devices of several processes is not addressable by any
  one of them; it is all-gathered (``multihost_utils.process_allgather``) so
  every process gets the whole value. On one process this is
  ``jax.device_get``.
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return jax.device_get(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: gather their data
      data = multihost_utils.process_allgather(jax.random.key_data(x), tiled=True)
      return jax.random.wrap_key_data(np.asarray(data), impl=jax.random.key_impl(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def make_mesh(num_devices: Optional[int], axis: str) -> jax.sharding.Mesh:
  """A one-axis mesh named ``axis`` over the first ``num_devices`` devices.

  ``jax.devices()`` lists the devices of every process, so after
  :func:`initialize` the mesh spans hosts. The axis is ``Auto``: XLA propagates
  the input shardings through the program.

  Args:
    num_devices: devices to use (``None``: all of them).
    axis: the axis name (:data:`RUNS_AXIS` or :data:`CLIENTS_AXIS`).

  Raises:
    ValueError: more devices requested than exist, or fewer than one.
  """
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(devices):
    raise ValueError(f'num_devices={num_devices!r}: need 1 to {len(devices)} (the '
                     f'{devices[0].platform} devices this job sees)')
  return jax.make_mesh((n,), (axis,), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def split_leading(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Sharding that splits an array's leading axis over the mesh's only axis."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Sharding that keeps a whole copy of an array on every device of the mesh."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
