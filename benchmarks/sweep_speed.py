r"""Runs x rounds per second of a sweep: R vectorized runs vs the runs one by one.

The main job's setting (``launch/configs/mnist_fedavg.py``: MNIST CNN, 500
IID clients, 5 per round, 1 local epoch, evaluation on the 10,000 test points
every 25 rounds). For each ``R`` and each ``--runs_chunk`` it compiles the
block of ``fl_jax.simulation.batch`` (``eval_every`` rounds and one evaluation
of ``R`` runs per dispatch; ``runs_chunk`` runs vmapped together, the chunks
mapped over: ``0`` is one vmap over all ``R``, ``1`` a ``lax.map`` over
unbatched runs), runs one warm-up block and times ``--blocks`` blocks.
Sequential baselines, both with compilation excluded:

* ``one-by-one``: the same block program with ``R = 1``; ``R`` runs one after
  another take ``R`` times as long (each run is its own program);
* ``per-round loop``: ``launch.train``'s driver, one jitted round per dispatch
  and a host evaluation every ``eval_every`` rounds.

FLOPs are counted from the block's jaxpr (``flop_count.py``: convolutions and
matrix products, loops expanded; elementwise work left out) and divided by
the time; a large float32 GEMM timed in the same run gives the machine's
practical peak for the fraction. ::

  python benchmarks/sweep_speed.py                  # R = 1, 8, 32
  python benchmarks/sweep_speed.py --runs=32,128 --runs_chunk=0   # on an accelerator
"""
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flop_count  # pylint: disable=g-import-not-at-top,wrong-import-position
import main_job  # pylint: disable=g-import-not-at-top,wrong-import-position

from fl_jax.simulation import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from launch.configs import mnist_fedavg  # pylint: disable=g-import-not-at-top,wrong-import-position

_RUNS = flags.DEFINE_list('runs', ['1', '8', '32'], 'Batch sizes R to time.')
_BLOCKS = flags.DEFINE_integer('blocks', 2, 'Timed blocks per R (after one warm-up block).')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 25, 'Rounds per block (one evaluation each).')
_LOOP = flags.DEFINE_bool('loop', True, "Also time launch.train's per-round loop.")
_CLIENT_PARALLEL = flags.DEFINE_string('client_parallel', '', "'' (by backend) | vmap | map.")
_CHUNKS = flags.DEFINE_list('runs_chunk', ['0', '1'],
                            'Runs vmapped together, each timed (0: all R, one vmap; 1: '
                            'lax.map over unbatched runs).')
_MODEL = flags.DEFINE_string('model', 'mnist_cnn', 'Model of the runs (mnist_cnn, lenet5, mlp).')


def base_config():
  cfg = mnist_fedavg.get_config().to_dict()
  cfg.update(eval_every=_EVAL_EVERY.value, rounds=10_000,
             client_parallel=_CLIENT_PARALLEL.value, model=_MODEL.value)
  return cfg


def gemm_rate(n=2048, repeats=5):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    f(a).block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def time_batch(num_runs, chunk):
  block, state, settings, args = main_job.block_and_inputs(
      num_runs, runs_chunk=chunk, **base_config())
  _, flops_hi = flop_count.flops(block, state, settings, *args)
  t = time.perf_counter()
  state, recs, _ = block(state, settings, *args)
  jax.block_until_ready(recs)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(_BLOCKS.value):
    state, recs, _ = block(state, settings, *args)
  jax.block_until_ready(recs)
  dt = time.perf_counter() - t
  rr = num_runs * _EVAL_EVERY.value * _BLOCKS.value
  assert block.num_traces() == 1, block.num_traces()
  return rr / dt, flops_hi * _BLOCKS.value / dt, compile_s


def time_loop():
  exp = train_lib.build_experiment(base_config())
  params = exp.model.init(jax.random.key(0))
  state = train_lib.init_server_state(params, exp.aggregator)
  data = jax.device_put(exp.clients)

  def block(state, r0):
    for r in range(_EVAL_EVERY.value):
      state, rm = exp.round_fn(state, data)
    train_lib.evaluate(exp, state.params, r0 + _EVAL_EVERY.value)
    return state, rm

  state, rm = block(state, 0)   # compiles
  jax.block_until_ready(rm)
  t = time.perf_counter()
  for b in range(_BLOCKS.value):
    state, rm = block(state, (b + 1) * _EVAL_EVERY.value)
  jax.block_until_ready(rm)
  return _EVAL_EVERY.value * _BLOCKS.value / (time.perf_counter() - t)


def main(argv):
  del argv
  print(f'backend: {jax.default_backend()}  devices: {jax.devices()}  jax {jax.__version__}  '
        f'model: {_MODEL.value}')
  peak = gemm_rate()
  print(f'float32 GEMM 2048^3: {peak / 1e9:.1f} GFLOP/s (practical peak of this run)')
  chunks = sorted({int(c) for c in _CHUNKS.value})
  one, _, _ = time_batch(1, 1)
  print(f'one run alone (R = 1 program): {one:8.2f} run-rounds/s', flush=True)
  rows = {}
  for r in sorted({int(x) for x in _RUNS.value} - {1}):   # R = 1 is `one`
    for c in chunks:
      c = min(c or r, r)
      if (r, c) in rows:
        continue
      rate, fl, comp = time_batch(r, c)
      rows[r, c] = rate
      how = 'one vmap' if c == r else f'map over chunks of {c}'
      print(f'R={r:4d} ({how:>20s}): {rate:8.2f} run-rounds/s  {fl / 1e9:7.1f} GFLOP/s '
            f'({100 * fl / peak:4.1f}% of the GEMM rate)  compile+first block {comp:.1f} s',
            flush=True)
  if _LOOP.value:
    loop = time_loop()
    print(f'per-round loop (launch.train, 1 run): {loop:8.2f} run-rounds/s', flush=True)
  print('\nspeed-up of R runs in one program over the same R runs one after another:')
  for (r, c), rate in rows.items():
    line = f'  R={r:4d} runs_chunk={c:4d}: {rate / one:5.2f}x vs the R = 1 program'
    if _LOOP.value:
      line += f'   {rate / loop:5.2f}x vs the per-round loop'
    print(line)


if __name__ == '__main__':
  app.run(main)
