r"""Time every aggregation rule, jitted JAX against a plain NumPy version.

The stacked client updates have the leaf shapes of fl_jax's VGG-9 for
CIFAR-10 (``fl_jax.models.get_model('vgg9', (32, 32, 3), 10)``, 9,225,610
parameters: its widths are 64..512), or a single ``[clients, dim]`` leaf when
``--dim`` is given (or the models package cannot be imported; the fallback
3,491,530 is the VGG-9 of the edge-case paper, Table 2). Each JAX rule is
jitted, run once to compile, then timed ``--repeats`` times with
``block_until_ready`` (median reported); each NumPy rule is timed the same
way. The last column is the largest absolute difference between the two
results (a sanity check, not a test).

The NumPy versions are straightforward (``np.median``, ``np.partition``, a
Gram matrix with BLAS, a Python Weiszfeld loop, ...); they work leaf by leaf
and, where a rule would copy the whole stack, in blocks of 65536 coordinates
to bound memory. The NumPy view of the JAX input array is zero-copy on CPU.
Memory: the stack plus one result of the same size for ``clip_norm``; at the
default 200 x 9.2M (7.4 GB) the run needs ~16 GB free and was OOM-killed on the
shared 24 GB machine, so the figures below use the paper's VGG-9 size.

  python benchmarks/aggregators.py                       # 200 clients x fl_jax VGG-9
  python benchmarks/aggregators.py --dim=3491530         # the paper's VGG-9 size
  python benchmarks/aggregators.py --clients=50 --dim=1000000 --repeats=3
  python benchmarks/aggregators.py --rules=median,krum --skip_numpy

Measured (``--dim=3491530``, 200 clients, f=20, beta=0.1, median of 3 runs, on
the 2-core CPU while other jobs kept its load average at 7-9, so every figure
is inflated by roughly 3x):

  rule                 jax s   numpy s  max |diff|
  mean                 1.570     1.710    2.95e-09
  median              18.100    38.245    0.00e+00
  trimmed_mean        26.784    36.129    5.01e-09
  krum                14.820    35.520    0.00e+00
  multi_krum          15.189    78.357    3.22e-09
  bulyan              29.362   118.764    1.12e-04  (float32 near-ties, see below)
  geometric_median     3.655    26.818    2.59e-09  (1 Weiszfeld step at tol 0.1)
  clip_norm            3.351     0.962    1.22e-06
  gaussian_noise       0.097     0.053         -    (one row)

Bulyan: both sides select the same 160 clients; in a few coordinates the
120th and 121st distances to the median are equal to within float32 rounding,
so the two versions average a different one of two values.
"""
import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fl_jax import aggregators as agg_lib  # pylint: disable=wrong-import-position

PAPER_VGG9_PARAMS = 3_491_530
BLOCK = 1 << 16


# --- NumPy reference implementations (leaf lists of [C, L] views) ------------


def _blocks(mats, fn):
  """``fn([C, B]) -> [B]`` over column blocks of every matrix; list of ``[L]``."""
  return [np.concatenate([fn(m[:, a:a + BLOCK]) for a in range(0, m.shape[1], BLOCK)])
          for m in mats]


def np_mean(mats, w):
  return [(w / w.sum()) @ m for m in mats]


def np_median(mats, w):
  return _blocks(mats, lambda b: np.median(b, axis=0))


def np_trimmed_mean(mats, w, beta):
  n = mats[0].shape[0]
  t = min(math.floor(beta * n), (n - 1) // 2)

  def fn(b):
    p = np.partition(b, [t, n - t - 1], axis=0)
    return p[t:n - t].mean(axis=0)

  return _blocks(mats, fn)


def _np_sq_dists(mats):
  g = sum(m @ m.T for m in mats).astype(np.float64)
  sq = np.diag(g)
  return np.maximum(sq[:, None] + sq[None, :] - 2 * g, 0.0)


def _np_krum_scores(d, members, f):
  k = max(len(members) - f - 2, 1)
  sub = d[np.ix_(members, members)]
  np.fill_diagonal(sub, np.inf)
  return np.sort(sub, axis=1)[:, :k].sum(axis=1)


def _np_krum_pick(d, members, f):
  """Position in ``members`` of the Krum choice; ties by total distance, then index."""
  sub = d[np.ix_(members, members)]
  spread = sub.sum(axis=1)
  return int(np.lexsort((np.arange(len(members)), spread, _np_krum_scores(d, members, f)))[0])


def np_krum(mats, w, f):
  i = int(np.argmin(_np_krum_scores(_np_sq_dists(mats), list(range(len(w))), f)))
  return [m[i].copy() for m in mats]


def np_multi_krum(mats, w, f, m_sel):
  scores = _np_krum_scores(_np_sq_dists(mats), list(range(len(w))), f)
  sel = np.argsort(scores, kind='stable')[:m_sel]
  coef = w[sel] / w[sel].sum()
  return [coef @ m[sel] for m in mats]


def np_bulyan(mats, w, f):
  n = len(w)
  d = _np_sq_dists(mats)
  remaining, chosen = list(range(n)), []
  for _ in range(n - 2 * f):
    chosen.append(remaining.pop(_np_krum_pick(d, remaining, f)))
  sel = np.sort(chosen)
  beta = len(sel) - 2 * f

  def fn(b):
    s = b[sel]
    dist = np.abs(s - np.median(s, axis=0))
    idx = np.argpartition(dist, beta - 1, axis=0)[:beta]
    return np.take_along_axis(s, idx, axis=0).mean(axis=0)

  return _blocks(mats, fn)


def np_geometric_median(mats, w, nu=1e-5, tol=1e-1, max_iters=500):
  alpha = w / w.sum()

  def dists(coef):
    sq = np.zeros(len(w))
    for m in mats:
      z = coef @ m
      for a in range(0, m.shape[1], BLOCK):
        sq += np.sum((m[:, a:a + BLOCK] - z[a:a + BLOCK]) ** 2, axis=1)
    return np.sqrt(sq)

  beta, dist = alpha, dists(alpha)
  obj = alpha @ dist
  for _ in range(max_iters):
    beta = alpha / np.maximum(nu, dist)
    beta /= beta.sum()
    dist = dists(beta)
    new_obj = alpha @ dist
    done = abs(obj - new_obj) <= tol * new_obj
    obj = new_obj
    if done:
      break
  return [beta @ m for m in mats]


def np_clip(mats, w, max_norm):
  norms = np.sqrt(sum(np.einsum('ij,ij->i', m, m) for m in mats))
  scale = np.minimum(1.0, max_norm / norms)
  return [m * scale[:, None].astype(m.dtype) for m in mats]


def np_noise(mats, w, sigma, rng):
  return [m + sigma * rng.standard_normal(m.shape, dtype=np.float32) for m in mats]


# --- harness -------------------------------------------------------------------


def make_updates(num_clients, dim, seed):
  """Stacked float32 updates ``{leaf: [C, *shape]}`` and data sizes ``[C]``."""
  source = None
  if dim is None:
    try:
      from fl_jax import models  # pylint: disable=g-import-not-at-top
      model = models.get_model('vgg9', (32, 32, 3), 10)
      shapes = jax.eval_shape(model.init, jax.random.key(0))
      source = 'fl_jax.models vgg9'
    except Exception as e:  # pylint: disable=broad-except
      print(f'(fl_jax.models unavailable: {e!r}; using the paper VGG-9 size '
            f'{PAPER_VGG9_PARAMS:,})')
      shapes = {'w': jax.ShapeDtypeStruct((PAPER_VGG9_PARAMS,), jnp.float32)}
      source = 'edge-case paper VGG-9 (fallback)'
  else:
    shapes = {'w': jax.ShapeDtypeStruct((dim,), jnp.float32)}
    source = '--dim'
  leaves, treedef = jax.tree.flatten(shapes)
  key = jax.random.key(seed)
  scale = jax.random.uniform(jax.random.fold_in(key, 1_000_001), (num_clients,),
                             minval=0.5, maxval=2.0)
  out = []
  for i, s in enumerate(leaves):
    x = jax.random.normal(jax.random.fold_in(key, i), (num_clients,) + s.shape, jnp.float32)
    out.append(x * (1e-2 * scale).reshape((-1,) + (1,) * len(s.shape)))
  updates = jax.tree.unflatten(treedef, out)
  weights = jax.random.randint(jax.random.fold_in(key, 1_000_002), (num_clients,), 50, 500)
  weights = weights.astype(jnp.float32)
  jax.block_until_ready((updates, weights))
  return updates, weights, source


def max_abs_diff(jax_out, np_out):
  """``max |a - b|`` of two results with the same number of entries, row by row."""
  a = np.asarray(jax_out)
  a = a.reshape((np_out.shape[0], -1) if np_out.ndim == 2 else (1, -1))
  b = np_out.reshape(a.shape)
  return max(float(np.max(np.abs(a[i] - b[i]))) for i in range(a.shape[0]))


def timed(fn, repeats):
  """Median seconds of ``repeats`` calls after a warm-up, and the last result.

  The previous result is dropped before each call, so at most one result
  (7 GB for a clipped stack of 200 VGG-9 updates) is alive at a time.
  """
  out = fn()
  jax.block_until_ready(out)   # warm-up / compile
  times = []
  for _ in range(repeats):
    out = None
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--clients', type=int, default=200)
  parser.add_argument('--dim', type=int, default=None,
                      help='coordinates per client (default: the VGG-9 parameter count)')
  parser.add_argument('--num_byzantine', type=int, default=None,
                      help='f for Krum / Multi-Krum / Bulyan (default: clients // 10)')
  parser.add_argument('--trim_beta', type=float, default=0.1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--rules', default='all')
  parser.add_argument('--skip_numpy', action='store_true')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  c = args.clients
  f = args.num_byzantine if args.num_byzantine is not None else max(1, c // 10)
  updates, weights, source = make_updates(c, args.dim, args.seed)
  leaves = jax.tree.leaves(updates)
  dim = sum(x[0].size for x in leaves)
  mats = [np.asarray(x).reshape(c, -1) for x in leaves]   # zero-copy views
  w_np = np.asarray(weights, np.float64)
  rng = np.random.default_rng(args.seed)
  print(f'{c} clients x {dim:,} coordinates ({source}; {len(leaves)} leaves, '
        f'{c * dim * 4 / 2**30:.2f} GiB float32), f={f}, trim beta={args.trim_beta}, '
        f'median of {args.repeats} runs after a warm-up; backend {jax.default_backend()}, '
        f'{jax.device_count()} device(s)')

  one_row = jax.tree.map(lambda x: x[:1], updates)
  rules = {
      'mean': (agg_lib.weighted_mean(), updates, lambda: np_mean(mats, w_np)),
      'median': (agg_lib.median(), updates, lambda: np_median(mats, w_np)),
      'trimmed_mean': (agg_lib.trimmed_mean(args.trim_beta), updates,
                       lambda: np_trimmed_mean(mats, w_np, args.trim_beta)),
      'krum': (agg_lib.krum(f), updates, lambda: np_krum(mats, w_np, f)),
      'multi_krum': (agg_lib.multi_krum(f), updates,
                     lambda: np_multi_krum(mats, w_np, f, c - f)),
      'bulyan': (agg_lib.bulyan(f), updates, lambda: np_bulyan(mats, w_np, f)),
      'geometric_median': (agg_lib.geometric_median(), updates,
                           lambda: np_geometric_median(mats, w_np)),
      'clip_norm': (agg_lib.clip_norm(2.0), updates, lambda: np_clip(mats, w_np, 2.0)),
      'gaussian_noise': (agg_lib.gaussian_noise(0.005), one_row,
                         lambda: np_noise([m[:1] for m in mats], w_np[:1], 0.005, rng)),
  }
  names = list(rules) if args.rules == 'all' else args.rules.split(',')
  unknown = [n for n in names if n not in rules]
  if unknown:
    raise ValueError(f'unknown rule(s) {unknown}; choose from {list(rules)}')

  print(f'{"rule":18s} {"jax s":>9s} {"numpy s":>9s} {"max |diff|":>11s}  notes')
  for name in names:
    agg, inputs, np_fn = rules[name]
    n_in = jax.tree.leaves(inputs)[0].shape[0]
    update = jax.jit(agg.update)
    state = agg.init(jax.tree.map(lambda x: x[0], inputs))
    jax_s, (out, _, _, diag) = timed(lambda: update(inputs, weights[:n_in], state), args.repeats)
    notes = ''
    if 'iterations' in diag:
      notes = f'{int(diag["iterations"])} Weiszfeld iterations'
    if 'selected' in diag:
      notes = f'{int(np.sum(diag["selected"]))} selected'
    np_s, diff = float('nan'), float('nan')
    if not args.skip_numpy:
      if name == 'clip_norm':
        # a full clipped stack: compare the first rows, then free the JAX result
        # before NumPy builds its own (two extra 7 GB stacks would not fit).
        ref = np_clip([m[:2] for m in mats], w_np[:2], 2.0)
        diff = max(max_abs_diff(np.asarray(o)[:r.shape[0]], r)
                   for o, r in zip(jax.tree.leaves(out), ref))
        del ref
        out = None
        np_s, _ = timed(np_fn, args.repeats)
      else:
        np_s, np_out = timed(np_fn, args.repeats)
        if name != 'gaussian_noise':   # different random streams
          diff = max(max_abs_diff(o, r) for o, r in zip(jax.tree.leaves(out), np_out))
        del np_out
    print(f'{name:18s} {jax_s:9.3f} {np_s:9.3f} {diff:11.2e}  {notes}', flush=True)
    del out, diag


if __name__ == '__main__':
  main()
