r"""Seconds per federated round: vmapped / chunked-map rounds vs a Python loop.

MNIST CNN (certified-FAT Appendix D), 120 samples per client, 1 local epoch,
batch 32, FedAvg. For each clients-per-round value it prints seconds per round,
client updates per second and the achieved GFLOP/s (model FLOPs from XLA's cost
analysis of one forward pass; training counts 3x forward per sample, each PGD
step 2x forward).

  python benchmarks/round_speed.py                       # plain SGD
  python benchmarks/round_speed.py --adv_steps=10        # 10-step PGD training
  python benchmarks/round_speed.py --clients=5,50 --modes=vmap,map:5,loop
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import aggregators
from fl_jax import client
from fl_jax import data as data_lib
from fl_jax import models
from fl_jax import simulation
from fl_jax.adversarial import adversarial_loss, standard_loss

_CLIENTS = flags.DEFINE_list('clients', ['5', '50', '200'], 'Clients per round.')
_MODES = flags.DEFINE_list('modes', ['vmap', 'map:1', 'map:5', 'loop'],
                           'vmap | map:CHUNK | loop (Python loop over a jitted client update).')
_SAMPLES = flags.DEFINE_integer('samples', 120, 'Samples per client.')
_ADV_STEPS = flags.DEFINE_integer('adv_steps', 0, 'PGD steps in local training (0 = plain SGD).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed rounds per setting.')
_CONV = flags.DEFINE_string('conv_impl', '', 'patches | xla ('' = backend default).')


def forward_flops(model, batch=1):
  x = jnp.zeros((batch,) + model.input_shape)
  params = model.init(jax.random.key(0))
  cost = jax.jit(model.apply).lower(params, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) / batch


def main(argv):
  del argv
  model = models.get_model('mnist_cnn', (28, 28, 1), 10, conv_impl=_CONV.value or None)
  ds = data_lib.load_dataset('mnist', 'train')
  max_c = max(int(c) for c in _CLIENTS.value)
  n = _SAMPLES.value
  x = ds.x[:max_c * n].reshape(max_c, n, 28, 28, 1)
  y = ds.y[:max_c * n].reshape(max_c, n)
  if _ADV_STEPS.value:
    loss = adversarial_loss(model.apply, eps=0.25, steps=_ADV_STEPS.value,
                            step_size=2.5 * 0.25 / _ADV_STEPS.value)
  else:
    loss = standard_loss(model.apply)
  hp = client.LocalSGD(local_epochs=1, batch_size=32, lr=0.05, momentum=0.9)
  cu = client.make_client_update(loss, hp)
  fwd = forward_flops(model)
  per_sample = fwd * (3 + 2 * _ADV_STEPS.value)
  print(f'backend={jax.default_backend()} devices={jax.devices()} conv_impl='
        f'{_CONV.value or models.default_conv_impl()} forward={fwd / 1e6:.2f} MFLOP/sample '
        f'train={per_sample / 1e6:.2f} MFLOP/sample adv_steps={_ADV_STEPS.value}')
  print(f"{'clients':>7} {'mode':>8} {'s/round':>9} {'updates/s':>10} {'GFLOP/s':>8}")
  params0 = model.init(jax.random.key(0))
  agg = aggregators.weighted_mean()
  for c in (int(v) for v in _CLIENTS.value):
    data = data_lib.ClientData(jnp.asarray(x[:c]), jnp.asarray(y[:c]),
                               jnp.ones((c, n), bool), jnp.full((c,), n, jnp.int32))
    # Samples per client actually trained: batches of 32 over n samples.
    flops_round = c * n * per_sample
    for mode in _MODES.value:
      if mode == 'loop':
        cu_jit = jax.jit(cu)
        def run_round(params):
          news = []
          for i in range(c):
            new, _ = cu_jit(params, client.ClientBatch(data.x[i], data.y[i]), data.mask[i],
                            jax.random.key(i), 0)
            news.append(new)
          ws = data.num_examples.astype(jnp.float32)
          upd = jax.tree.map(lambda *ls: jnp.stack(ls), *news)
          upd = jax.tree.map(lambda u, p: u - p, upd, params)
          out, _, _ = aggregators.aggregate(agg, upd, ws, agg.init(params))
          return jax.tree.map(jnp.add, params, out)
        params = run_round(params0)  # compile
        jax.block_until_ready(params)
        t = time.perf_counter()
        for _ in range(_REPEATS.value):
          params = run_round(params)
        jax.block_until_ready(params)
      else:
        par, _, chunk = mode.partition(':')
        fn = simulation.make_round_fn(cu, agg, num_clients=c, clients_per_round=c, seed=0,
                                      client_parallel=par, chunk_size=int(chunk) if chunk else None)
        state = simulation.init_server_state(jax.tree.map(jnp.copy, params0), agg)
        state, _ = fn(state, data)
        jax.block_until_ready(state)
        t = time.perf_counter()
        for _ in range(_REPEATS.value):
          state, _ = fn(state, data)
        jax.block_until_ready(state)
      dt = (time.perf_counter() - t) / _REPEATS.value
      print(f'{c:>7} {mode:>8} {dt:>9.3f} {c / dt:>10.1f} {flops_round / dt / 1e9:>8.1f}',
            flush=True)


if __name__ == '__main__':
  app.run(main)
