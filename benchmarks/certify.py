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

``--layouts`` instead certifies the paper's MNIST CNN written three ways --
(a) ``fl_jax.models``' own module, (b) a plain-JAX NCHW / OIHW function
with explicit padding and VALID convolutions (as a PyTorch port reads),
(c) a ``flax.linen`` NHWC module -- with the same weights (``--mnist_weights``
or freshly initialised), ``chunk_size`` left at its default, and then at
every ``--layout_chunks`` size, on ``--num_points`` MNIST test points at
every eps, and prints ms per point, GFLOP per point that ran and the plan
(``certification.explain``). ``--baseline=MODULE`` times an importable copy
of another version of the certification package alongside, setting by
setting, so the two are measured back to back in one run.

  python benchmarks/certify.py
  python benchmarks/certify.py --models=mnist_cnn --chunk_sizes=10,50 \
      --eps=0.02,0.1 --num_points=100
  python benchmarks/certify.py --layouts --mnist_weights=/tmp/w.npz
"""
import importlib
import os
import resource
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax import lax
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
_LAYOUTS = flags.DEFINE_bool(
    'layouts', False, 'Certify the MNIST CNN written three ways (fl_jax '
    'module, plain-JAX NCHW / OIHW with VALID convs, flax.linen NHWC) at the '
    'default chunking and at --layout_chunks.')
_LAYOUT_CHUNKS = flags.DEFINE_list(
    'layout_chunks', ['10', '25', '50', '100'],
    'Forced chunk sizes timed next to the default in --layouts.')
_BASELINE = flags.DEFINE_string(
    'baseline', '', '--layouts: an importable module holding another version '
    'of fl_jax.certification, timed setting by setting next to this one.')
_BASELINE_CHUNKS = flags.DEFINE_bool(
    'baseline_forced_chunks', False, '--layouts: also time --baseline at '
    'every --layout_chunks size (default: at the default chunking only).')
_BASELINE_PATH = flags.DEFINE_string(
    'baseline_path', '', 'Folder added to sys.path to import --baseline.')
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


# --- the MNIST CNN written three ways (--layouts) ----------------------------

def _nchw_apply(p, x):
  """The MNIST CNN as a PyTorch port reads: NCHW / OIHW, pad then VALID."""
  dn = ('NCHW', 'OIHW', 'NCHW')
  h = x                                                   # [B, 1, 28, 28]
  for name in ('conv1', 'conv2'):
    h = jnp.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h = lax.conv_general_dilated(h, p[name]['weight'], (2, 2), 'VALID',
                                 dimension_numbers=dn)
    h = jax.nn.relu(h + p[name]['bias'][None, :, None, None])
  h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p['fc1']['weight'].T
                  + p['fc1']['bias'])                     # (C, H, W) flatten
  return h @ p['fc2']['weight'].T + p['fc2']['bias']


def _linen_module():
  from flax import linen as nn  # pylint: disable=g-import-not-at-top

  class LinenCNN(nn.Module):
    """The MNIST CNN as a ``flax.linen`` NHWC module."""

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(16, (4, 4), strides=2, padding=1)(x))
      x = nn.relu(nn.Conv(32, (4, 4), strides=2, padding=1)(x))
      x = nn.relu(nn.Dense(1000)(x.reshape(x.shape[0], -1)))
      return nn.Dense(10)(x)
  return LinenCNN()


_LINEN = []


def _linen_apply(p, x):
  if not _LINEN:
    _LINEN.append(_linen_module())
  return _LINEN[0].apply(p, x)


def _layouts(params):
  """``[(name, apply, params, to_layout(x))]``: one function, three writings.

  ``params``: the ``fl_jax.models`` MNIST CNN's (HWIO kernels, NHWC
  flatten); the other two get the same weights rearranged.
  """
  fl = models.get_model('mnist_cnn', (28, 28, 1), 10)
  k = {n: params[n]['kernel'] for n in params}
  b = {n: params[n]['bias'] for n in params}
  oihw = lambda w: jnp.transpose(w, (3, 2, 0, 1))
  fc1_chw = k['fc1'].reshape(7, 7, 32, -1).transpose(2, 0, 1, 3).reshape(
      7 * 7 * 32, -1)
  p_nchw = {'conv1': {'weight': oihw(k['conv1']), 'bias': b['conv1']},
            'conv2': {'weight': oihw(k['conv2']), 'bias': b['conv2']},
            'fc1': {'weight': fc1_chw.T, 'bias': b['fc1']},
            'fc2': {'weight': k['fc2'].T, 'bias': b['fc2']}}
  names = {'conv1': 'Conv_0', 'conv2': 'Conv_1', 'fc1': 'Dense_0',
           'fc2': 'Dense_1'}
  p_linen = {'params': {names[n]: {'kernel': k[n], 'bias': b[n]}
                        for n in params}}
  nhwc = lambda x: x
  nchw = lambda x: jnp.transpose(x, (0, 3, 1, 2))
  return [('fl_jax module (NHWC)', fl.apply, params, nhwc),
          ('plain JAX NCHW/OIHW VALID', _nchw_apply, p_nchw, nchw),
          ('flax.linen NHWC', _linen_apply, p_linen, nhwc)]


def _time(certs, apply_fn, params, x, y, eps, chunk, repeats):
  """Times ``certify`` of every package in ``certs``, interleaved.

  After one first call each (compilation), ``repeats`` rounds run every
  package once in turn, so they share the machine's load alike. Returns
  per package ``(first call s, fastest wall s, fastest process CPU s,
  certified accuracy)``.
  """
  kw = {} if chunk is None else {'chunk_size': chunk}
  out = []
  for cert in certs:
    t0 = time.perf_counter()
    res = jax.block_until_ready(cert.certify(apply_fn, params, x, y, eps,
                                             **kw))
    acc = float(np.mean(np.asarray(res.certified & res.correct)))
    out.append([time.perf_counter() - t0, float('inf'), float('inf'), acc])
  for _ in range(max(1, repeats)):
    for k, cert in enumerate(certs):
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(cert.certify(apply_fn, params, x, y, eps, **kw))
      out[k][1] = min(out[k][1], time.perf_counter() - t0)
      out[k][2] = min(out[k][2], time.process_time() - c0)
  return out


def _run_layouts(params, x, y):
  baseline = None
  if _BASELINE.value:
    if _BASELINE_PATH.value:
      sys.path.insert(0, _BASELINE_PATH.value)
    baseline = importlib.import_module(_BASELINE.value)
    print(f'baseline: {_BASELINE.value} ({baseline.__file__})')
  n = x.shape[0]
  eps_list = [float(e) for e in _EPS.value]
  chunks = [None] + [int(c) for c in _LAYOUT_CHUNKS.value]
  rows = []
  for name, apply_fn, p, to_layout in _layouts(params):
    xl = to_layout(x)
    print(f'== {name}: {n} points, input {tuple(xl.shape[1:])}', flush=True)
    if hasattr(certification, 'explain'):
      print(certification.explain(apply_fn, p, xl.shape[1:], eps_list[0],
                                  num_points=n), flush=True)
    for chunk in chunks:
      for eps in eps_list:
        with_base = baseline is not None and (chunk is None
                                              or _BASELINE_CHUNKS.value)
        certs = [certification] + ([baseline] if with_base else [])
        timed = _time(certs, apply_fn, p, xl, y, eps, chunk, _REPEATS.value)
        first, best, cpu, acc = timed[0]
        line = (f'  chunk {"default" if chunk is None else chunk:>7} eps '
                f'{eps:.2f}: {best / n * 1e3:6.2f} ms/point (CPU '
                f'{cpu / n * 1e3:6.2f}; first call {first:4.1f} s), '
                f'certified accuracy {acc:.2f}')
        base_ms = None
        if with_base:
          bf, bb, bcpu, bacc = timed[1]
          base_ms = bb / n * 1e3
          line += (f' | baseline {base_ms:6.2f} ms/point (CPU '
                   f'{bcpu / n * 1e3:6.2f}; first {bf:4.1f} s, acc '
                   f'{bacc:.2f}), baseline/this wall {bb / best:4.2f} CPU '
                   f'{bcpu / cpu:4.2f}')
        if chunk is None and _RAN.value:
          kw = {}
          ran = flop_count.executed(
              lambda q, a, b_, e=eps, f=apply_fn: certification.certify(
                  f, q, a, b_, e, **kw), p, xl, y) / n
          line += f', {ran / 1e9:.3f} GFLOP/point ran'
        print(line, flush=True)
        rows.append((name, chunk, eps, best / n * 1e3, base_ms,
                     cpu / n * 1e3,
                     timed[1][2] / n * 1e3 if with_base else None))
  print('== summary (ms/point; default chunking; best forced chunk)')
  for eps in eps_list:
    default = {r[0]: r[3] for r in rows if r[2] == eps and r[1] is None}
    forced = {}
    for r in rows:
      if r[2] == eps and r[1] is not None:
        forced[r[0]] = min(forced.get(r[0], float('inf')), r[3])
    fastest = min(default.values())
    for name in default:
      print(f'  eps {eps:.2f} {name:28s} default {default[name]:7.2f} '
            f'({default[name] / fastest:4.2f}x the fastest layout), best '
            f'forced chunk {forced.get(name, float("nan")):7.2f} (default / '
            f'best {default[name] / forced.get(name, float("nan")):4.2f})')
      base = [r for r in rows if r[0] == name and r[2] == eps
              and r[1] is None and r[4] is not None]
      if base:
        b = base[0]
        print(f'  {"":9s} {"":28s} baseline default {b[4]:7.2f} ms '
              f'(baseline / this: wall {b[4] / b[3]:4.2f}, CPU '
              f'{b[6] / b[5]:4.2f})')


def _mnist_params():
  model = models.get_model('mnist_cnn', (28, 28, 1), 10)
  params = model.init(jax.random.key(0))
  if _MNIST_WEIGHTS.value:
    w = np.load(_MNIST_WEIGHTS.value)
    params = {k: {'kernel': jnp.asarray(w[f'{k}_kernel']),
                  'bias': jnp.asarray(w[f'{k}_bias'])} for k in params}
    print(f'weights from {_MNIST_WEIGHTS.value}')
  return params


def main(argv):
  del argv
  if _LAYOUTS.value:
    x, y, what = _points('mnist', (28, 28, 1), _NUM.value)
    print(f'{x.shape[0]} MNIST points ({what})')
    _run_layouts(_mnist_params(), x, y)
    return
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
