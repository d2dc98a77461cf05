r"""Points per second and peak memory of fl_jax.certification.

For the MNIST and CIFAR-10 CNNs of the certified-FAT paper (Appendix D,
padding 1), every domain, chunk size and eps, it prints the points certified
per second (after compilation; the compile time is printed once per setting),
the FLOPs per point (``flop_count``: contractions in the jaxpr, loops
expanded; a range, as the windowed order picks its block widths at run
time), the FLOPs that ran at each eps (``flop_count.executed``) and the
achieved GFLOP/s, the peak temporary memory of the compiled program (XLA memory analysis: what one chunk needs) and the
process's peak resident memory so far.

Speed depends on the weights and eps through one thing: the windowed order
(``fl_jax.certification.windowed``) pools only the ReLU symbols that exist
(crossing neurons), so a trained model at small eps runs faster than a
random one. ``--mnist_weights`` loads trained MNIST CNN weights (the ``.npz``
that ``benchmarks/compare_art.py`` writes); otherwise freshly initialised
models are used. The points are the first test images (MNIST from the
repo's data folder; CIFAR-10 if it is available, else uniform noise of the
right shape).

  python benchmarks/certify.py
  python benchmarks/certify.py --models=mnist_cnn --chunk_sizes=10,50 \
      --eps=0.02,0.1 --num_points=100
"""
import os
import resource
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import certification
from fl_jax import data as data_lib
from fl_jax import models

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flop_count  # pylint: disable=g-import-not-at-top,wrong-import-position

_MODELS = flags.DEFINE_list('models', ['mnist_cnn', 'cifar_cnn'],
                            'mnist_cnn and / or cifar_cnn.')
_MNIST_WEIGHTS = flags.DEFINE_string(
    'mnist_weights', '', 'Optional .npz of trained MNIST CNN weights '
    '(keys <layer>_kernel / <layer>_bias, as compare_art.py writes them).')
_DOMAINS = flags.DEFINE_list('domains', ['zonotope', 'interval'], 'Domains.')
_EPS = flags.DEFINE_list('eps', ['0.02', '0.05', '0.1'],
                         'Radii (CIFAR-10 uses eps / 10, i.e. ~0.5-2.5/255).')
_CHUNKS = flags.DEFINE_list('chunk_sizes', ['10', '50'],
                            'Chunk sizes for MNIST (CIFAR-10 uses /25).')
_NUM = flags.DEFINE_integer('num_points', 100,
                            'MNIST points (CIFAR-10 uses a 25th).')
_CONV = flags.DEFINE_string('conv_impl', '', 'patches | xla (default: backend).')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Timed runs per setting (the '
                                'fastest is printed).')
_STRATEGIES = flags.DEFINE_list(
    'strategies', ['auto'], 'Association orders of the zonotope domain '
    '(auto | backward | forward; see certification.certify).')
_RAN = flags.DEFINE_bool('count_ran', True, 'Also count the FLOPs that ran '
                          'at each eps (one extra, uncached compile each).')
_VS_CPU = flags.DEFINE_bool('compare_cpu', False, 'On an accelerator: also '
                            'certify on the host CPU and print the largest '
                            'difference of the certifiable losses.')

# name -> (data set, input shape, points / chunk divisor, eps scale)
_SPECS = {'mnist_cnn': ('mnist', (28, 28, 1), 1, 1.0),
          'cifar_cnn': ('cifar10', (32, 32, 3), 25, 0.1)}


def _points(dataset, shape, n):
  try:
    ds = data_lib.load_dataset(dataset, 'test')
    return jnp.asarray(ds.x[:n]), jnp.asarray(ds.y[:n]), 'test images'
  except Exception:  # pylint: disable=broad-except  (no local copy / TFDS)
    x = jax.random.uniform(jax.random.key(0), (n,) + shape)
    return x, jnp.zeros((n,), jnp.int32), 'uniform noise'


def _flops_per_point(model, params, x, y, domain, chunk, strategy):
  """(low, high) FLOPs per point: contractions in the jaxpr, loops expanded.

  See ``flop_count``: XLA's own cost analysis counts loop bodies once and,
  on GPU, leaves out cuBLAS GEMMs. The range comes from ``lax.switch``
  branches picked at run time (the windowed order's pooled width).
  """
  lo, hi = flop_count.flops(
      lambda p, a, b: certification.certify(model.apply, p, a, b, 0.0,
                                            domain=domain, chunk_size=chunk,
                                            strategy=strategy),
      params, x, y)
  return lo / x.shape[0], hi / x.shape[0]


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_device_mib() -> str:
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return '' if peak is None else f', device peak {peak / 2**20:.0f} MiB'


def main(argv):
  del argv
  for name in _MODELS.value:
    dataset, shape, shrink, eps_scale = _SPECS[name]
    model = models.get_model(name, shape, 10, conv_impl=_CONV.value or None)
    params = model.init(jax.random.key(0))
    if name == 'mnist_cnn' and _MNIST_WEIGHTS.value:
      w = np.load(_MNIST_WEIGHTS.value)
      params = {k: {'kernel': jnp.asarray(w[f'{k}_kernel']),
                    'bias': jnp.asarray(w[f'{k}_bias'])} for k in params}
      print(f'weights from {_MNIST_WEIGHTS.value}')
    n = max(1, _NUM.value // shrink)
    x, y, what = _points(dataset, shape, n)
    print(f'== {name}: {n} points ({what}), conv impl '
          f'{_CONV.value or models.default_conv_impl()}', flush=True)
    chunks = sorted({max(1, min(n, int(c) // shrink)) for c in _CHUNKS.value})
    min_chunk = chunks[0]
    settings = [(d, s) for d in _DOMAINS.value
                for s in (_STRATEGIES.value if d == 'zonotope' else ['auto'])]
    for domain, strategy in settings:
      for chunk in chunks:
        fn = jax.jit(lambda p, a, b, e, d=domain, c=chunk, s=strategy:
                     certification.certify(model.apply, p, a, b, e, domain=d,
                                           chunk_size=c, strategy=s))
        t0 = time.perf_counter()
        compiled = fn.lower(params, x, y, 0.0).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        temp_mib = (getattr(mem, 'temp_size_in_bytes', 0) or 0) / 2**20
        fl_lo, fl_hi = _flops_per_point(model, params, x, y, domain, chunk,
                                        strategy)
        label = domain if strategy == 'auto' else f'{domain}/{strategy}'
        print(f'  {label:8s} chunk {chunk:3d}: compile {compile_s:5.1f} s, '
              f'{fl_lo / 1e9:.3f}-{fl_hi / 1e9:.3f} GFLOP/point (jaxpr count), '
              f'XLA temp memory {temp_mib:8.1f} MiB', flush=True)
        for e in _EPS.value:
          eps = float(e) * eps_scale
          sec = cpu = float('inf')
          for _ in range(max(1, _REPEATS.value)):
            t0, c0 = time.perf_counter(), time.process_time()
            res = jax.block_until_ready(compiled(params, x, y, eps))
            sec = min(sec, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
          acc = float(np.mean(np.asarray(res.certified & res.correct)))
          ran = flop_count.executed(
              lambda p, a, b, eps=eps, d=domain, c=chunk, s=strategy:
              certification.certify(model.apply, p, a, b, eps, domain=d,
                                    chunk_size=c, strategy=s),
              params, x, y) / n if _RAN.value else float('nan')
          print(f'    eps {eps:.4f}: {n / sec:8.2f} points/s '
                f'({sec / n * 1e3:8.2f} ms/point, CPU {cpu / n * 1e3:8.2f} '
                f'ms/point, {ran / 1e9:.3f} GFLOP/point ran, '
                f'{ran / (sec / n) / 1e9:.1f} GFLOP/s), '
                f'certified accuracy {acc:.2f}, peak RSS {_peak_rss_mib():.0f} '
                f'MiB{_peak_device_mib()}', flush=True)
          if (_VS_CPU.value and jax.default_backend() != 'cpu'
              and chunk == min_chunk):
            m = min(n, 100)
            host = jax.devices('cpu')[0]
            ref = certification.certify(
                model.apply, jax.device_put(params, host),
                jax.device_put(x[:m], host), jax.device_put(y[:m], host), eps,
                domain=domain, chunk_size=min(chunk, m), strategy=strategy)
            diff = np.abs(np.asarray(res.loss[:m]) - np.asarray(ref.loss))
            same = np.mean(np.asarray(res.certified[:m])
                           == np.asarray(ref.certified))
            print(f'      vs host CPU ({m} points): max |loss diff| {diff.max():.2e} '
                  f'(loss up to {np.abs(np.asarray(ref.loss)).max():.3g}), '
                  f'certified flags agree on {same:.0%}', flush=True)


if __name__ == '__main__':
  app.run(main)
