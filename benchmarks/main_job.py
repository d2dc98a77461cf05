"""The main job's vectorized block, built once for the benchmarks that time or profile it."""
import jax
import jax.numpy as jnp

from fl_jax.simulation import batch as batch_lib
from launch.configs import mnist_fedavg


def block_and_inputs(num_runs: int, runs_chunk=None, **overrides):
  """``(block, state, settings, args)`` for ``num_runs`` seeds of ``mnist_fedavg``.

  ``overrides`` replace config keys of every run; run ``r`` gets ``seed=r``.
  ``block(state, settings, *args)`` runs one evaluation period of every run.
  """
  cfg = dict(mnist_fedavg.get_config().to_dict(), **overrides)
  batch = batch_lib.build_batch([dict(cfg, seed=s) for s in range(num_runs)])
  settings = {k: jnp.asarray(v) for k, v in batch.settings.items()}
  state = batch_lib.make_init_fn(batch)(settings, batch.defender_data, None)
  block = batch_lib.make_block_fn(batch, evals_per_block=1, runs_chunk=runs_chunk)
  args = (jax.device_put(batch.clients), batch.attack_data, batch.defender_data,
          jax.device_put(batch.test.x), jax.device_put(batch.test.y))
  return block, state, settings, args
