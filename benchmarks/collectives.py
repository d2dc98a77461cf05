r"""What each aggregation rule moves between devices on a client-sharded stack.

A child process starts with ``--devices`` simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``), splits a stack of
``--clients`` updates of ``--params`` float32 parameters by client over them
(``NamedSharding(mesh, P('clients'))``), compiles every rule's ``update`` with
XLA's SPMD partitioner and reads the collectives from the optimised HLO: their
kind, count, and the bytes of their results (per device), summed over the
program (a collective inside a loop counts once per loop body), for the stack
split by client as the clients computed it and after
:func:`fl_jax.simulation.round.split_by_parameter` (the round's default
``aggregate_layout='params'``), with the rule's result made whole on every
device as the round makes the new model. The figures are
properties of the compiled program, not timings, so they hold on any backend
that partitions the same way. ::

  python benchmarks/collectives.py
  python benchmarks/collectives.py --clients=64 --params=1000000 --devices=8
"""
import collections
import os
import re
import subprocess
import sys

from absl import app
from absl import flags

_DEVICES = flags.DEFINE_integer('devices', 8, 'Simulated devices.')
_CLIENTS = flags.DEFINE_integer('clients', 16, 'Clients in the stack (a multiple of devices).')
_PARAMS = flags.DEFINE_integer('params', 100_000, 'Parameters per update.')
_CHILD = flags.DEFINE_bool('child', False, 'Internal: measure in this process.')

KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_BYTES = {'f32': 4, 's32': 4, 'u32': 4, 'pred': 1, 'f64': 8, 's64': 8, 'u8': 1, 'bf16': 2,
          'f16': 2}
_SHAPE = re.compile(r'\b(f32|s32|u32|pred|f64|s64|u8|bf16|f16)\[([0-9,]*)\]')


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


def collectives(hlo: str) -> dict:
  """``{kind: (count, result bytes)}`` of the collectives in an HLO module's text."""
  out = collections.defaultdict(lambda: [0, 0])
  for line in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z\-]+)(?:-start)?\(', line)
    if not m:
      continue
    kind = m.group(2)
    kind = kind[:-6] if kind.endswith('-start') else kind
    if kind in KINDS:
      out[kind][0] += 1
      out[kind][1] += _shape_bytes(m.group(1))
  return dict(out)


def _measure():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fl_jax import aggregators as A  # pylint: disable=g-import-not-at-top
  from fl_jax.simulation import distributed  # pylint: disable=g-import-not-at-top
  c, p = _CLIENTS.value, _PARAMS.value
  mesh = distributed.make_mesh(_DEVICES.value, distributed.CLIENTS_AXIS)
  split = distributed.split_leading(mesh)
  rng = np.random.default_rng(0)
  ups = jax.device_put({'w': jnp.asarray(rng.normal(size=(c, p)), jnp.float32)}, split)
  weights = jax.device_put(jnp.ones((c,), jnp.float32), split)
  f = max(1, (c - 3) // 4)
  rules = {
      'mean': A.weighted_mean(), 'median': A.median(), 'trimmed_mean': A.trimmed_mean(0.1),
      'krum': A.krum(f), 'multi_krum': A.multi_krum(f), 'bulyan': A.bulyan(f),
      'geometric_median': A.geometric_median(),
      'clipping + mean': A.build('mean', norm_bound=1.0),
  }
  stack = c * p * 4
  print(f'{c} clients x {p:,} float32 parameters split over {mesh.size} devices '
        f'({stack / mesh.size / 2**20:.2f} MiB of updates per device; one update '
        f'{p * 4 / 2**20:.2f} MiB)')
  from fl_jax.simulation import round as round_lib  # pylint: disable=g-import-not-at-top
  print(f'{"rule":18s} {"layout":8s} {"collectives (count x kind)":66s} {"MiB/device":>10s} '
        f'{"x update":>8s}')
  for name, agg in rules.items():
    state = agg.init({'w': jnp.zeros((p,), jnp.float32)})
    for layout in ('clients', 'params'):
      whole = distributed.replicated(mesh)
      if layout == 'params':  # what make_round_fn(aggregate_layout='params') does
        fn = lambda u, w, s, agg=agg: jax.lax.with_sharding_constraint(
            agg.update(round_lib.split_by_parameter(u, mesh), w, s)[0], whole)
      else:
        fn = lambda u, w, s, agg=agg: jax.lax.with_sharding_constraint(
            agg.update(u, w, s)[0], whole)
      hlo = jax.jit(fn).lower(ups, weights, state).compile().as_text()
      got = collectives(hlo)
      moved = sum(b for _, b in got.values())
      desc = ', '.join(f'{n} x {k}' for k, (n, _) in sorted(got.items())) or 'none'
      print(f'{name:18s} {layout:8s} {desc:66s} {moved / 2**20:10.2f} {moved / (p * 4):8.2f}',
            flush=True)


def main(argv):
  del argv
  if _CHILD.value:
    _measure()
    return
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={_DEVICES.value}')
  subprocess.run([sys.executable, __file__, '--child', f'--devices={_DEVICES.value}',
                  f'--clients={_CLIENTS.value}', f'--params={_PARAMS.value}'],
                 env=env, check=True)


if __name__ == '__main__':
  app.run(main)
