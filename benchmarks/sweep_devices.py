r"""Scaling of a vectorized sweep over devices: R runs split over a 'runs' mesh.

For each device count ``D`` (``--devices``) a child process starts with ``D``
devices (on a CPU host: ``XLA_FLAGS=--xla_force_host_platform_device_count=D``
simulated devices sharing the host's cores; on an accelerator host the real
ones), builds the batch of ``--runs`` runs of the main job's setting, puts it
on :func:`fl_jax.simulation.batch.runs_mesh` (each device holds ``R / D``
runs), runs one warm-up block and times ``--blocks`` blocks of
``--eval_every`` rounds. It prints run-rounds per second and the speed-up over
``D = 1``. ::

  python benchmarks/sweep_devices.py                          # D = 1, 2, 4, 8 simulated CPU devices
  python benchmarks/sweep_devices.py --devices=1,8 --runs=64 --model=mnist_cnn
  python benchmarks/sweep_devices.py --clients_per_round=1000   # one round's clients split
  python benchmarks/sweep_devices.py --clients_per_round=10000 --devices=1 --model=mnist_cnn

With ``--clients_per_round=m`` it times instead one run whose round trains ``m``
clients (``m`` of ``m``, MNIST split evenly among them), split over the ``D``
devices (``client_devices=D``), and prints clients per second.
"""
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts to time.')
_RUNS = flags.DEFINE_integer('runs', 8, 'Runs R (a multiple of every device count).')
_BLOCKS = flags.DEFINE_integer('blocks', 2, 'Timed blocks (after one warm-up block).')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 10, 'Rounds per block.')
_MODEL = flags.DEFINE_string('model', 'mlp', 'Model of the runs.')
_CHILD = flags.DEFINE_integer('child', 0, 'Internal: time D devices in this process.')
_CLIENTS = flags.DEFINE_integer(
    'clients_per_round', 0, 'If > 0: time one run whose round trains this many clients, '
    'split over the devices (client_devices), instead of R runs split over them.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds with --clients_per_round.')


def _time_clients(num_devices: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import init_server_state  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import train as train_lib  # pylint: disable=g-import-not-at-top
  from launch.configs import mnist_fedavg  # pylint: disable=g-import-not-at-top
  m = _CLIENTS.value
  c = mnist_fedavg.get_config()
  c.update(model=_MODEL.value, num_clients=m, clients_per_round=m, client_devices=num_devices,
           client_parallel='vmap', aggregator='mean', min_client_size=1)
  exp = train_lib.build_experiment(c)
  fresh = lambda: init_server_state(exp.model.init(jax.random.key(0)), exp.aggregator)
  data, defender_data = train_lib.place_round_data(exp)
  state, rm = exp.round_fn(fresh(), data, exp.attack_data, defender_data)
  jax.block_until_ready(rm)
  t = time.perf_counter()
  for _ in range(_ROUNDS.value):
    state, rm = exp.round_fn(state, data, exp.attack_data, defender_data)
  jax.block_until_ready(rm)
  dt = time.perf_counter() - t
  return {'devices': num_devices, 'platform': jax.devices()[0].platform, 'clients': m,
          'seconds_per_round': dt / _ROUNDS.value, 'clients_per_s': m * _ROUNDS.value / dt,
          'examples_per_client': int(exp.clients.x.shape[1])}


def _time_here(num_devices: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from launch.configs import mnist_fedavg  # pylint: disable=g-import-not-at-top
  configs = []
  for i in range(_RUNS.value):
    c = mnist_fedavg.get_config().to_dict()
    c.update(seed=i, model=_MODEL.value, eval_every=_EVAL_EVERY.value, rounds=10_000)
    configs.append(c)
  b = batch_lib.build_batch(configs)
  mesh = batch_lib.runs_mesh(num_devices)
  settings = {k: jnp.asarray(v) for k, v in b.settings.items()}
  state = batch_lib.make_init_fn(b)(settings, b.defender_data, b.init_params)
  state, settings = batch_lib.place((state, settings), mesh, True)
  shared = batch_lib.place((b.clients, b.attack_data, b.defender_data, b.test.x, b.test.y,
                            b.target), mesh, False)
  clients, attack, dd, tx, ty, target = shared
  block = batch_lib.make_block_fn(b, evals_per_block=1, runs_chunk=len(configs))
  state, recs, _ = block(state, settings, clients, attack, dd, tx, ty, target)
  jax.block_until_ready(recs)
  t = time.perf_counter()
  for _ in range(_BLOCKS.value):
    state, recs, _ = block(state, settings, clients, attack, dd, tx, ty, target)
  jax.block_until_ready(recs)
  dt = time.perf_counter() - t
  rounds = _BLOCKS.value * _EVAL_EVERY.value
  return {'devices': num_devices, 'platform': jax.devices()[0].platform,
          'runs': _RUNS.value, 'seconds': dt,
          'run_rounds_per_s': _RUNS.value * rounds / dt, 'traces': block.num_traces()}


def main(argv):
  del argv
  if _CHILD.value:
    timer = _time_clients if _CLIENTS.value else _time_here
    print('RESULT ' + json.dumps(timer(_CHILD.value)), flush=True)
    return
  rows = []
  for d in (int(x) for x in _DEVICES.value):
    if _CLIENTS.value and _CLIENTS.value % d:
      raise app.UsageError(f'--clients_per_round={_CLIENTS.value} does not split over {d} '
                           'devices')
    if not _CLIENTS.value and _RUNS.value % d:
      raise app.UsageError(f'--runs={_RUNS.value} does not split over {d} devices')
    env = dict(os.environ)
    if 'cuda' not in env.get('JAX_PLATFORMS', '') and 'gpu' not in env.get('JAX_PLATFORMS', ''):
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                          f' --xla_force_host_platform_device_count={d}').strip()
    args = [sys.executable, os.path.abspath(__file__), f'--child={d}', f'--runs={_RUNS.value}',
            f'--blocks={_BLOCKS.value}', f'--eval_every={_EVAL_EVERY.value}',
            f'--model={_MODEL.value}', f'--clients_per_round={_CLIENTS.value}',
            f'--rounds={_ROUNDS.value}']
    out = subprocess.run(args, env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
    if out.returncode or not line:
      raise RuntimeError(f'child with {d} devices failed:\n{out.stderr[-3000:]}')
    rows.append(json.loads(line[0][len('RESULT '):]))
    r = rows[-1]
    if _CLIENTS.value:
      print(f"{r['devices']} {r['platform']} device(s), {r['clients']} clients per round "
            f"({r['examples_per_client']} examples each): {r['seconds_per_round']:.3f} s/round, "
            f"{r['clients_per_s']:.0f} clients/s, x{r['clients_per_s'] / rows[0]['clients_per_s']:.2f} "
            f"vs {rows[0]['devices']} device(s)", flush=True)
      continue
    print(f"{r['devices']} {r['platform']} device(s), {r['runs']} runs: "
          f"{r['run_rounds_per_s']:.2f} run-rounds/s, x{r['run_rounds_per_s'] / rows[0]['run_rounds_per_s']:.2f} "
          f"vs {rows[0]['devices']} device(s); block compiled {r['traces']} time(s)", flush=True)


if __name__ == '__main__':
  app.run(main)
