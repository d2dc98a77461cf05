r"""Where the time of one vectorized block goes: XLA:CPU / GPU ops by total time.

Builds the block of ``fl_jax.simulation.batch`` for ``R`` runs of the main
job's setting (as ``sweep_speed.py``), runs one warm-up block, traces one block
with ``jax.profiler`` and prints the ops of the compiled program with the most
time (summed over calls) and the share of the summed op time each takes. On CPU, set
``XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true`` so XLA records every op; the
tracing slows the block down, so read shares, not absolute times. ::

  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python benchmarks/profile_block.py --runs=1
  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python benchmarks/profile_block.py --runs=8
"""
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import main_job  # pylint: disable=g-import-not-at-top,wrong-import-position

_RUNS = flags.DEFINE_integer('runs', 1, 'Runs R in the block.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 25, 'Rounds per block.')
_CHUNK = flags.DEFINE_integer('runs_chunk', 0, 'Runs vmapped together (0: by backend).')
_TOP = flags.DEFINE_integer('top', 15, 'Ops to print.')
_HLO = flags.DEFINE_string('hlo', '', 'If set, write the compiled HLO text to this file.')

# Host-side spans of the runtime itself, not ops of the program.
_RUNTIME_SPANS = ('ThunkExecutor', 'SlinkyThreadPool', '$')


def main(argv):
  del argv
  block, state, settings, args = main_job.block_and_inputs(
      _RUNS.value, runs_chunk=_CHUNK.value or None, eval_every=_EVAL_EVERY.value,
      rounds=10_000)
  if _HLO.value:
    with open(_HLO.value, 'w') as f:
      f.write(block.lower(state, settings, *args).compile().as_text())
  state, recs, _ = block(state, settings, *args)
  jax.block_until_ready(recs)
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      state, recs, _ = block(state, settings, *args)
      jax.block_until_ready(recs)
    wall = time.perf_counter() - t
    with gzip.open(glob.glob(f'{d}/**/*.trace.json.gz', recursive=True)[0]) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(_RUNTIME_SPANS):
      total[e['name']] += e['dur'] * 1e-6
      calls[e['name']] += 1
  op_time = sum(total.values())
  print(f'R={_RUNS.value}: traced block {wall:.1f} s ({_EVAL_EVERY.value} rounds), '
        f'{len(total)} ops, {op_time:.1f} s of op time (summed over threads)')
  for name, sec in total.most_common(_TOP.value):
    print(f'  {sec:8.2f} s {100 * sec / op_time:5.1f}% of op time  {calls[name]:6d} calls  {name}')


if __name__ == '__main__':
  app.run(main)
