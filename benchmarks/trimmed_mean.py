r"""Trimmed mean: the sorting network vs bisection vs NumPy, in one run.

For each (clients C, coordinates L) it times ``fl_jax.aggregators.trimmed_mean``
with ``method='network'`` and ``'bisect'`` (jitted, compilation excluded, mean
of 3 calls), the median's pruned network for reference, and NumPy's
``np.sort`` + trimmed mean over the client axis (the way NumPy FL frameworks
compute it). ::

  python benchmarks/trimmed_mean.py
  python benchmarks/trimmed_mean.py --clients=10,50,100 --coords=1600000,9200000
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import aggregators as A

_CLIENTS = flags.DEFINE_list('clients', ['10', '50'], 'Client counts C.')
_COORDS = flags.DEFINE_list('coords', ['1600000'], 'Coordinates L per client.')
_BETA = flags.DEFINE_float('beta', 0.2, 'Trimmed fraction per side.')


def _time(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t) / repeats


def main(argv):
  del argv
  beta = _BETA.value
  for c in (int(v) for v in _CLIENTS.value):
    for size in (int(v) for v in _COORDS.value):
      x = jnp.asarray(np.random.default_rng(0).normal(size=(c, size)).astype(np.float32))
      w = jnp.ones(c)
      res = {}
      for name, agg in (('network', A.trimmed_mean(beta, 'network')),
                        ('bisect', A.trimmed_mean(beta, 'bisect')),
                        ('median network', A.median('network'))):
        f = jax.jit(lambda u, w, agg=agg: agg.update({'p': u}, w, agg.init({'p': u[0]}))[0])
        res[name] = _time(f, x, w)
      xs = np.asarray(x)
      k = int(np.floor(beta * c))
      res['numpy'] = _time(lambda: np.mean(np.sort(xs, axis=0)[k:c - k], axis=0))
      print(f"C={c} L={size}: trimmed network {res['network']:.3f} s, bisect "
            f"{res['bisect']:.3f} s ({res['bisect'] / res['network']:.1f}x), NumPy sort "
            f"{res['numpy']:.3f} s ({res['numpy'] / res['network']:.1f}x); median network "
            f"{res['median network']:.3f} s", flush=True)


if __name__ == '__main__':
  app.run(main)
