r"""fl_jax DeepZono vs ART's ``PytorchDeepZ``: same weights, points and eps.

Trains the MNIST CNN of the certified-FAT paper (Appendix D, padding 1) for a
few hundred optax steps on a few thousand MNIST training images (half of each
batch PGD examples, so that some points certify and many ReLUs cross), writes
its weights to an ``.npz``, runs ``benchmarks/art_reference.py`` under
``/work/artvenv`` (torch + ART live only there, never in fl_jax's venv) on the
first ``--num_points`` MNIST test images at every eps, then certifies the same
points with ``fl_jax.certification`` and compares:

* per-class logit bounds and the upper bounds of ``z_q - z_pred`` (absolute
  and relative error; both sides compute in float32);
* certified counts (w.r.t. the model's prediction, ART's rule) and certified
  accuracy;
* points per second of both (fl_jax: median of three runs after
  compilation, compile time printed separately; ART: one run, as it has no
  compilation) and process CPU time per point (the machine is shared;
  wall time then mostly measures the other tenants), fl_jax's FLOPs per point
  (``flop_count``: contractions in the jaxpr, loops expanded; what ran at
  each eps, as block widths are picked at run time) and the achieved
  GFLOP/s, next to the FLOPs of the textbook forward order.

Rounding: both sides compute in float32, and the difference bounds at eps 0.1
are sums of about 6,500 terms of size ~100, so float32 alone leaves errors
of order 1e-4 on either side. ``--reference64`` (default on) therefore also
computes the bounds in float64 (fl_jax with ``jax_enable_x64`` in a separate
process, in the textbook *forward* order, a different code path from the
default) and prints each float32 result's distance to that reference.

Input boxes: ART's default pre-processing clips the eps-box to [0, 1] the same
way (``adjust_to_within_bounds``), so both sides use identical boxes.

  python benchmarks/compare_art.py                       # 100 points
  python benchmarks/compare_art.py --num_points=20 --eps=0.02
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fl_jax import certification
from fl_jax import data as data_lib
from fl_jax import models
from fl_jax.adversarial import adversarial_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flop_count  # pylint: disable=g-import-not-at-top,wrong-import-position

_NUM_POINTS = flags.DEFINE_integer('num_points', 100, 'MNIST test points.')
_EPS = flags.DEFINE_list('eps', ['0.02', '0.05', '0.1'], 'Certification radii.')
_CHUNK = flags.DEFINE_integer('chunk_size', 25, 'fl_jax points per chunk.')
_STEPS = flags.DEFINE_integer('train_steps', 300, 'optax steps.')
_TRAIN_N = flags.DEFINE_integer('train_points', 8000, 'MNIST training images.')
_ADV_EPS = flags.DEFINE_float('adv_eps', 0.1, 'PGD radius in training (0: plain).')
_WEIGHTS = flags.DEFINE_string(
    'weights', os.path.join(tempfile.gettempdir(), 'fl_jax_mnist_cnn_cert.npz'),
    'Cache of the trained weights (re-used if present).')
_RETRAIN = flags.DEFINE_bool('retrain', False, 'Ignore the weights cache.')
_ART_PYTHON = flags.DEFINE_string('art_python', '/work/artvenv/bin/python',
                                  'Python of the venv holding torch + ART.')
_CONV = flags.DEFINE_string('conv_impl', '', 'patches | xla (default: backend).')
_REF64 = flags.DEFINE_bool('reference64', True,
                           'Also compute float64 bounds (subprocess) and '
                           'compare both float32 results with them.')
_F64_IO = flags.DEFINE_list('f64_io', [], 'Internal: IN.npz,OUT.npz of the '
                            'float64 reference subprocess.')

_LAYERS = ('conv1', 'conv2', 'fc1', 'fc2')


def train(model, seed=0):
  """A quickly trained (half-PGD) MNIST CNN, as a params dict."""
  ds = data_lib.load_dataset('mnist', 'train')
  x, y = ds.x[:_TRAIN_N.value], ds.y[:_TRAIN_N.value]
  params = model.init(jax.random.key(seed))
  opt = optax.adam(1e-3)
  state = opt.init(params)
  if _ADV_EPS.value > 0:
    loss_fn = adversarial_loss(model.apply, eps=_ADV_EPS.value, steps=5,
                               step_size=_ADV_EPS.value / 4, fraction=0.5)
  else:
    def loss_fn(p, xb, yb, key):
      del key
      return optax.softmax_cross_entropy_with_integer_labels(
          model.apply(p, xb), yb)

  @jax.jit
  def step(p, s, xb, yb, key):
    loss, g = jax.value_and_grad(lambda p: loss_fn(p, xb, yb, key).mean())(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  rng = np.random.default_rng(seed)
  for i in range(_STEPS.value):
    idx = rng.integers(0, len(x), 64)
    params, state, loss = step(params, state, x[idx], y[idx],
                               jax.random.key(i))
  print(f'trained {_STEPS.value} steps, last loss {float(loss):.3f}')
  return params


def float64_reference(inp, out):
  """Subprocess body: float64 difference / logit bounds, forward order."""
  jax.config.update('jax_enable_x64', True)
  d = np.load(inp)
  model = models.get_model('mnist_cnn', (28, 28, 1), 10, conv_impl='xla')
  params = {k: {'kernel': jnp.asarray(d[f'{k}_kernel'], jnp.float64),
                'bias': jnp.asarray(d[f'{k}_bias'], jnp.float64)} for k in _LAYERS}
  x = jnp.asarray(d['x'], jnp.float64)
  pred = jnp.asarray(d['pred'])
  res = {}
  for e, eps in enumerate(d['eps']):
    kw = dict(chunk_size=10, strategy='forward')
    _, upper = certification.logit_difference_bounds(model.apply, params, x, pred,
                                                     float(eps), **kw)
    z = certification.propagate(model.apply, params, x, float(eps), **kw)
    rad = jnp.abs(z.generators).sum(1)
    res[f'diff_upper_{e}'] = np.asarray(upper)
    res[f'lower_{e}'] = np.asarray(z.center - rad)
    res[f'upper_{e}'] = np.asarray(z.center + rad)
    if res[f'upper_{e}'].dtype != np.float64 or z.generators.dtype != jnp.float64:
      raise RuntimeError('the float64 reference did not run in float64')
  np.savez(out, **res)


def run_float64_reference(params, x, pred, eps_list):
  with tempfile.TemporaryDirectory() as tmp:
    inp, out = os.path.join(tmp, 'in64.npz'), os.path.join(tmp, 'out64.npz')
    np.savez(inp, x=np.asarray(x), pred=np.asarray(pred), eps=np.asarray(eps_list),
             **{f'{k}_{m}': np.asarray(v) for k in _LAYERS for m, v in params[k].items()})
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.abspath(__file__), f'--f64_io={inp},{out}'],
                   check=True)
    print(f'float64 reference computed in {time.perf_counter() - t0:.0f} s')
    return dict(np.load(out))


def main(argv):
  del argv
  if _F64_IO.value:
    float64_reference(*_F64_IO.value)
    return
  model = models.get_model('mnist_cnn', (28, 28, 1), 10,
                           conv_impl=_CONV.value or None)
  if os.path.exists(_WEIGHTS.value) and not _RETRAIN.value:
    w = np.load(_WEIGHTS.value)
    params = {k: {'kernel': jnp.asarray(w[f'{k}_kernel']),
                  'bias': jnp.asarray(w[f'{k}_bias'])} for k in _LAYERS}
    print(f'loaded weights from {_WEIGHTS.value}')
  else:
    params = train(model)
    np.savez(_WEIGHTS.value, **{f'{k}_{n}': np.asarray(v)
                                 for k in _LAYERS for n, v in params[k].items()})
  test = data_lib.load_dataset('mnist', 'test')
  n = _NUM_POINTS.value
  x, y = jnp.asarray(test.x[:n]), jnp.asarray(test.y[:n])
  eps_list = [float(e) for e in _EPS.value]
  pred = jnp.argmax(model.apply(params, x), axis=1)
  print(f'clean accuracy on the {n} points: {float(jnp.mean(pred == y)):.3f}')

  # --- ART (separate venv) ---------------------------------------------------
  art = None
  if os.path.exists(_ART_PYTHON.value):
    spec = [dict(op='conv', w='conv1_kernel', b='conv1_bias', stride=[2, 2],
                 padding=[1, 1]), dict(op='relu'),
            dict(op='conv', w='conv2_kernel', b='conv2_bias', stride=[2, 2],
                 padding=[1, 1]), dict(op='relu'), dict(op='flatten'),
            dict(op='dense', w='fc1_kernel', b='fc1_bias'), dict(op='relu'),
            dict(op='dense', w='fc2_kernel', b='fc2_bias')]
    with tempfile.TemporaryDirectory() as tmp:
      inp, out = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.npz')
      np.savez(inp, spec=json.dumps(spec), x=np.asarray(x), y=np.asarray(y),
               eps=np.asarray(eps_list),
               **{f'{k}_{m}': np.asarray(v)
                  for k in _LAYERS for m, v in params[k].items()})
      script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'art_reference.py')
      subprocess.run([_ART_PYTHON.value, script, inp, out], check=True)
      art = dict(np.load(out))
    if not np.array_equal(art['pred'], np.asarray(pred)):
      print('WARNING: ART and fl_jax predictions differ on',
            int(np.sum(art['pred'] != np.asarray(pred))), 'points')
  else:
    print(f'{_ART_PYTHON.value} not found: fl_jax side only')

  ref64 = run_float64_reference(params, x, pred, eps_list) if _REF64.value else None

  # --- fl_jax ----------------------------------------------------------------
  kw = dict(chunk_size=_CHUNK.value)
  one_x, one_y = x[:1], pred[:1]
  fl_lo, fl_hi = (f / n for f in flop_count.flops(
      lambda p, a, b: certification.logit_difference_bounds(
          model.apply, p, a, b, 0.05, **kw), params, x, pred))
  fl_fwd = flop_count.flops(
      lambda p, a, b: certification.logit_difference_bounds(
          model.apply, p, a, b, 0.05, strategy='forward', **kw),
      params, one_x, one_y)[1]
  print(f'FLOPs per point (contractions in the jaxpr, loops expanded): fl_jax '
        f'order {fl_lo / 1e9:.2f}-{fl_hi / 1e9:.2f} GFLOP (the range: block '
        f'widths picked at run time; per eps below, what ran), textbook '
        f'forward order {fl_fwd / 1e9:.2f} GFLOP')
  rows = []
  for e, eps in enumerate(eps_list):
    t0 = time.perf_counter()
    jax.block_until_ready(certification.propagate(model.apply, params, x, eps,
                                                  **kw))
    jax.block_until_ready(certification.logit_difference_bounds(
        model.apply, params, x, pred, eps, **kw))
    compile_s = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(3):                       # median of three timed runs
      t0, c0 = time.perf_counter(), time.process_time()
      lower, upper = jax.block_until_ready(
          certification.logit_difference_bounds(model.apply, params, x, pred,
                                                eps, **kw))
      walls.append(time.perf_counter() - t0)
      cpus.append(time.process_time() - c0)
    seconds, cpu = float(np.median(walls)), float(np.median(cpus))
    z = certification.propagate(model.apply, params, x, eps, **kw)
    ran = flop_count.executed(
        lambda p, a, b, eps=eps: certification.logit_difference_bounds(
            model.apply, p, a, b, eps, **kw), params, x, pred) / n
    c_lo, c_hi = (np.asarray(b) for b in jax.vmap(lambda c, g: (
        c - jnp.abs(g).sum(0), c + jnp.abs(g).sum(0)))(z.center, z.generators))
    upper = np.asarray(upper)
    certified = np.all(np.where(np.arange(10) == np.asarray(pred)[:, None],
                                True, upper < 0), axis=1)
    cert_acc = float(np.mean(certified & (np.asarray(pred) == np.asarray(y))))
    line = (f'eps={eps:g}: fl_jax {certified.sum()}/{n} certified (w.r.t. '
            f'prediction), certified accuracy {cert_acc:.2f}, '
            f'{n / seconds:.1f} points/s ({seconds / n * 1e3:.2f} ms/point, '
            f'{ran / 1e9:.2f} GFLOP/point ran, '
            f'{ran / (seconds / n) / 1e9:.0f} GFLOP/s; first call incl. '
            f'compile {compile_s:.1f} s)')
    line += f'\n    fl_jax CPU time {cpu / n * 1e3:.1f} ms/point (all threads)'
    row = dict(eps=eps, fl_pps=n / seconds, fl_cert=int(certified.sum()),
               fl_cpu=cpu)
    if art is not None:
      a_sec = float(art[f'seconds_{e}'])
      a_cpu = float(art[f'cpu_seconds_{e}'])
      err = {}
      for name, ours, ref in (('lower', c_lo, art[f'lower_{e}']),
                              ('upper', c_hi, art[f'upper_{e}']),
                              ('diff_upper', upper, art[f'diff_upper_{e}'])):
        d = np.abs(ours - ref)
        err[name] = (float(d.max()),
                     float((d / np.maximum(1.0, np.abs(ref))).max()))
      a_cert = int(art[f'certified_{e}'].sum())
      line += (f'\n    ART {a_cert}/{n} certified, {n / a_sec:.2f} points/s '
               f'({a_sec / n * 1e3:.1f} ms/point) -> speed-up '
               f'{a_sec / seconds:.1f}x (CPU time {a_cpu / n * 1e3:.1f} ms/point '
               f'-> {a_cpu / cpu:.1f}x); certified flags agree on '
               f'{int(np.sum(art[f"certified_{e}"] == certified))}/{n}')
      for name, (ab, rel) in err.items():
        line += f'\n    {name}: max |diff| {ab:.2e}, max |diff|/max(1,|ART|) {rel:.2e}'
      row.update(art_pps=n / a_sec, art_cert=a_cert, errors=err, art_cpu=a_cpu)
    if ref64 is not None:
      for name, ours in (('lower', c_lo), ('upper', c_hi), ('diff_upper', upper)):
        ref = ref64[f'{name}_{e}']
        line += f'\n    {name} vs float64 reference: fl_jax max |diff| {np.abs(ours - ref).max():.2e}'
        if art is not None:
          line += f', ART {np.abs(art[f"{name}_{e}"] - ref).max():.2e}'
        row.setdefault('errors64', {})[name] = (
            float(np.abs(ours - ref).max()),
            float(np.abs(art[f'{name}_{e}'] - ref).max()) if art is not None else None)
    print(line, flush=True)
    rows.append(row)
  if art is not None:
    tot_fl = sum(n / r['fl_pps'] for r in rows)
    tot_art = sum(n / r['art_pps'] for r in rows)
    cpu_fl = sum(r['fl_cpu'] for r in rows)
    cpu_art = sum(r['art_cpu'] for r in rows)
    print(f'all eps: fl_jax {tot_fl:.2f} s, ART {tot_art:.2f} s -> '
          f'{tot_art / tot_fl:.1f}x wall; CPU time fl_jax {cpu_fl:.2f} s, ART '
          f'{cpu_art:.2f} s -> {cpu_art / cpu_fl:.1f}x')
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
