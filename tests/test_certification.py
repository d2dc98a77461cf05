"""Tests for fl_jax.certification (DeepZono zonotopes and IBP boxes)."""
import functools

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from fl_jax import certification as cert
from fl_jax import models

# Same numbers whichever association order is used; float32 rounding only.
TOL = 2e-5


# --- small networks ------------------------------------------------------------

def counting_dense_net():
  """``dense_net`` whose apply function counts its traces: ``(base, params, apply_fn, traces)``."""
  base, params = dense_net()
  traces = []

  def apply_fn(p, x):
    traces.append(1)
    return base(p, x)

  return base, params, apply_fn, traces


def dense_net(widths=(6, 8, 8, 3), seed=0):
  keys = jax.random.split(jax.random.key(seed), len(widths))
  params = {f'w{i}': jax.random.normal(k, (a, b)) / np.sqrt(a)
            for i, (k, a, b) in enumerate(zip(keys, widths[:-1], widths[1:]))}
  params.update({f'b{i}': 0.1 * jax.random.normal(k, (b,))
                 for i, (k, b) in enumerate(zip(keys[::-1], widths[1:]))})
  n = len(widths) - 1

  def apply(p, x):
    h = x.reshape(x.shape[0], -1)
    for i in range(n):
      h = h @ p[f'w{i}'] + p[f'b{i}']
      if i < n - 1:
        h = jax.nn.relu(h)
    return h
  return apply, params


def conv_net(seed=1):
  """xla conv (stride 2) -> relu -> im2col conv -> relu -> avg pool -> dense."""
  k = jax.random.split(jax.random.key(seed), 4)
  params = {'c1': 0.5 * jax.random.normal(k[0], (3, 3, 2, 4)),
            'c2': 0.3 * jax.random.normal(k[1], (2, 2, 4, 5)),
            'b2': 0.1 * jax.random.normal(k[2], (5,)),
            'd': 0.3 * jax.random.normal(k[3], (5 * 2 * 2, 3))}

  def apply(p, x):                                   # x [B, 7, 7, 2]
    h = lax.conv_general_dilated(x, p['c1'], (2, 2), ((1, 1), (1, 1)),
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = jax.nn.relu(h)                               # [B, 4, 4, 4]
    hp = jnp.pad(h, ((0, 0), (1, 0), (1, 0), (0, 0)))
    cols = [hp[:, i:i + 4, j:j + 4, :] for i in range(2) for j in range(2)]
    h = jnp.concatenate(cols, -1) @ p['c2'].reshape(16, 5) + p['b2']
    h = jax.nn.relu(h)                               # [B, 4, 4, 5]
    h = lax.reduce_window(h, 0., lax.add, (1, 2, 2, 1), (1, 2, 2, 1),
                          'VALID') / 4.0             # [B, 2, 2, 5]
    return h.reshape(h.shape[0], -1) @ p['d']
  return apply, params


def pool_net(seed=2):
  """conv -> relu -> 2x2 max pool -> dense (max pooling transformer)."""
  k = jax.random.split(jax.random.key(seed), 2)
  params = {'c': 0.6 * jax.random.normal(k[0], (3, 3, 1, 3)),
            'd': 0.4 * jax.random.normal(k[1], (3 * 3 * 3, 4))}

  def apply(p, x):                                   # x [B, 6, 6, 1]
    h = lax.conv_general_dilated(x, p['c'], (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = lax.reduce_window(jax.nn.relu(h), -jnp.inf, lax.max, (1, 2, 2, 1),
                          (1, 2, 2, 1), 'VALID')
    return h.reshape(h.shape[0], -1) @ p['d']
  return apply, params


def random_params(model, seed=0):
  """He-scaled random parameters in the model's own tree (no compilation)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0))

  def draw(s):
    if len(s.shape) == 1:
      return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    fan_in = int(np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)).astype(
        np.float32)
  return jax.tree.map(draw, shapes)


def points(shape, n=3, seed=3):
  return jax.random.uniform(jax.random.key(seed), (n,) + shape)


# Built once so that the tests share compilations (same function objects,
# same shapes; eps and the parameters are traced).
NETS = {'dense': (dense_net(), (6,)), 'conv': (conv_net(), (7, 7, 2)),
        'maxpool': (pool_net(), (6, 6, 1))}


@functools.partial(jax.jit, static_argnums=2)
def box_samples(x, eps, n, key):
  """Uniform samples and random corners of the clipped box around each point."""
  l, u = jnp.clip(x - eps, 0, 1), jnp.clip(x + eps, 0, 1)
  k1, k2 = jax.random.split(key)
  unif = l[None] + (u - l)[None] * jax.random.uniform(k1, (n,) + x.shape)
  corner = jnp.where(jax.random.bernoulli(k2, 0.5, (n,) + x.shape), u[None],
                     l[None])
  return jnp.concatenate([unif, corner, l[None], u[None]], 0)


def margin_pgd(apply_fn, params, x, y, q, eps, steps=30, key=None):
  """Maximises z_q - z_y over the clipped box (sign gradient ascent)."""
  return _margin_pgd(apply_fn, params, x, y, q, eps, key, steps)


@functools.partial(jax.jit, static_argnums=(0, 7))
def _margin_pgd(apply_fn, params, x, y, q, eps, key, steps):
  l, u = jnp.clip(x - eps, 0, 1), jnp.clip(x + eps, 0, 1)
  rows = jnp.arange(x.shape[0])

  def margin(xx):
    z = apply_fn(params, xx)
    return z[rows, q] - z[rows, y]

  def step(_, xx):
    g = jax.grad(lambda v: jnp.sum(margin(v)))(xx)
    return jnp.clip(xx + 0.25 * eps * jnp.sign(g), l, u)
  xx = l + (u - l) * jax.random.uniform(key, x.shape)
  return margin(lax.fori_loop(0, steps, step, xx))


# --- tests ---------------------------------------------------------------------

class AppendixATest(parameterized.TestCase):
  """The toy network of Zizzo et al. (2021), Appendix A, worked by hand.

  x1, x2 in [0, 0.5]: centre 0.25, generators 0.25 e1 and 0.25 e2.
  W = [[2, 1], [1, -1]]:  x3 = 2 x1 + x2 = 0.75 + 0.5 e1 + 0.25 e2  in [0, 1.5]
                          x4 = x1 - x2   = 0    + 0.25 e1 - 0.25 e2 in [-0.5, 0.5]
  ReLU: x5 = x3 (l = 0, exact); x4 crosses: lambda = 0.5 / 1 = 0.5,
  mu = -0.5 * (-0.5) / 2 = 0.125, so x6 = 0.125 + 0.125 e1 - 0.125 e2 + 0.125 e3
  in [-0.25, 0.5].
  """
  W = jnp.array([[2., 1.], [1., -1.]])
  X = jnp.array([[0.25, 0.25]])

  @parameterized.parameters('auto', 'forward', 'backward')
  def test_hand_values(self, strategy):
    pre = cert.propagate(lambda p, x: x @ p.T, self.W, self.X, 0.25,
                         strategy=strategy)
    np.testing.assert_allclose(pre.center[0], [0.75, 0.0])
    np.testing.assert_allclose(pre.generators[0], [[0.5, 0.25], [0.25, -0.25]])
    np.testing.assert_allclose(pre.center[0] - jax.vmap(cert.Zonotope.radius)(pre)[0], [0.0, -0.5])
    np.testing.assert_allclose(pre.center[0] + jax.vmap(cert.Zonotope.radius)(pre)[0], [1.5, 0.5])
    post = cert.propagate(lambda p, x: jax.nn.relu(x @ p.T), self.W, self.X,
                          0.25, strategy=strategy)
    np.testing.assert_allclose(post.center[0], [0.75, 0.125])
    # Symbols: e1, e2 (input), then one per ReLU neuron (x5's is zero).
    np.testing.assert_allclose(post.generators[0], [[0.5, 0.125],
                                                    [0.25, -0.125],
                                                    [0.0, 0.0],
                                                    [0.0, 0.125]])
    lo, hi = jax.vmap(cert.Zonotope.bounds)(post)
    np.testing.assert_allclose(lo[0], [0.0, -0.25])
    np.testing.assert_allclose(hi[0], [1.5, 0.5])

  def test_interval_and_reference(self):
    box = cert.propagate(lambda p, x: jax.nn.relu(x @ p.T), self.W, self.X,
                         0.25, domain='interval')
    np.testing.assert_allclose(box.lower[0], [0.0, 0.0])
    np.testing.assert_allclose(box.upper[0], [1.5, 0.5])
    z = cert.input_box(self.X[0], 0.25)
    z = cert.zonotope_relu(cert.zonotope_affine(z, lambda v: self.W @ v))
    np.testing.assert_allclose(z.center, [0.75, 0.125])
    np.testing.assert_allclose(z.generators, [[0.5, 0.125], [0.25, -0.125],
                                              [0.0, 0.0], [0.0, 0.125]])


class SoundnessTest(parameterized.TestCase):

  @parameterized.parameters('dense', 'conv', 'maxpool')
  def test_samples_corners_and_pgd_inside(self, name):
    (apply_fn, params), shape = NETS[name]
    x = points(shape)
    y = jnp.argmax(apply_fn(params, x), axis=1)
    eps = 0.08
    z = cert.propagate(apply_fn, params, x, eps)
    lo, hi = jax.vmap(cert.Zonotope.bounds)(z)
    box = cert.propagate(apply_fn, params, x, eps, domain='interval')
    # Difference bounds from the output zonotope (the certify path is tested
    # against these in TightnessTest and ApiTest).
    g_y = jnp.take_along_axis(z.generators, y[:, None, None], 2)
    c_y = jnp.take_along_axis(z.center, y[:, None], 1)
    d_rad = jnp.sum(jnp.abs(z.generators - g_y), axis=1)
    d_lo, d_hi = z.center - c_y - d_rad, z.center - c_y + d_rad
    other = jnp.arange(lo.shape[1])[None] != y[:, None]
    certified = jnp.all(jnp.where(other, d_hi < 0, True), axis=1)
    key = jax.random.key(7)
    keys = jax.random.split(key, x.shape[0])
    xs = jax.vmap(lambda xb, k: box_samples(xb, eps, 200, k))(x, keys)
    out = jax.jit(jax.vmap(apply_fn, (None, 0)))(params, xs)   # [B, S, Q]
    diff = out - jnp.take_along_axis(out, y[:, None, None], 2)
    self.assertTrue(np.all(out >= lo[:, None] - TOL)
                    and np.all(out <= hi[:, None] + TOL))
    self.assertTrue(np.all(out >= box.lower[:, None] - TOL)
                    and np.all(out <= box.upper[:, None] + TOL))
    self.assertTrue(np.all(diff >= d_lo[:, None] - TOL)
                    and np.all(diff <= d_hi[:, None] + TOL))
    n_cls = lo.shape[1]
    for q in range(n_cls):
      m = margin_pgd(apply_fn, params, x, y, jnp.full_like(y, q), eps,
                     key=jax.random.fold_in(key, 100 + q))
      self.assertTrue(np.all(m <= d_hi[:, q] + TOL))
      self.assertTrue(np.all(m >= d_lo[:, q] - TOL))
      # A certified point is never broken.
      self.assertFalse(np.any((m >= 0) & (q != y) & certified))

  def test_pgd_cannot_break_certified_points(self):
    apply_fn, params = dense_net(seed=5)
    x = points((6,), n=16, seed=11)
    y = jnp.argmax(apply_fn(params, x), axis=1)
    eps = 0.03
    r = cert.certify(apply_fn, params, x, y, eps)
    self.assertGreater(int(r.certified.sum()), 0)      # the test has teeth
    self.assertLess(int(r.certified.sum()), x.shape[0])
    for q in range(3):
      m = margin_pgd(apply_fn, params, x, y, jnp.full_like(y, q), eps,
                     steps=50, key=jax.random.key(q))
      self.assertFalse(np.any((m >= 0) & (q != y) & r.certified))


class TightnessTest(absltest.TestCase):

  def test_difference_zonotope_beats_interval_subtraction(self):
    (apply_fn, params), shape = NETS['conv']
    x = points(shape)
    y = jnp.argmax(apply_fn(params, x), axis=1)
    for eps in (0.01, 0.05):
      z = cert.propagate(apply_fn, params, x, eps)
      lo, hi = jax.vmap(cert.Zonotope.bounds)(z)
      d_lo, d_hi = cert.logit_difference_bounds(apply_fn, params, x, y, eps)
      lo_y = jnp.take_along_axis(lo, y[:, None], 1)
      hi_y = jnp.take_along_axis(hi, y[:, None], 1)
      sub_hi = hi - lo_y
      sub_lo = lo - hi_y
      other = jnp.arange(3)[None] != y[:, None]
      self.assertTrue(np.all(np.where(other, d_hi <= sub_hi + TOL, True)))
      self.assertTrue(np.all(np.where(other, d_lo >= sub_lo - TOL, True)))
      # Strictly tighter somewhere (shared generators cancel).
      self.assertTrue(np.any(np.where(other, d_hi < sub_hi - 1e-3, False)))
      cert_sub = jnp.all(jnp.where(other, sub_hi < 0, True), axis=1)
      r = cert.certify(apply_fn, params, x, y, eps)
      np.testing.assert_array_equal(
          r.certified, jnp.all(jnp.where(other, d_hi < 0, True), axis=1))
      np.testing.assert_allclose(
          r.loss, jnp.maximum(0, jnp.max(jnp.where(other, d_hi, -jnp.inf), 1)),
          rtol=1e-6)
      self.assertTrue(np.all(r.certified | ~cert_sub))

  def test_strategies_agree(self):
    (apply_fn, params), shape = NETS['conv']
    x = points(shape)
    zs = [cert.propagate(apply_fn, params, x, 0.05, strategy=s)
          for s in ('auto', 'forward', 'backward')]
    for z in zs[1:]:
      np.testing.assert_allclose(z.center, zs[0].center, atol=TOL)
      np.testing.assert_allclose(z.generators, zs[0].generators, atol=TOL)

  def test_max_pool_exact_when_dominated(self):
    def apply_fn(p, x):                                  # max over pairs
      return lax.reduce_window(x * p, -jnp.inf, lax.max, (1, 2), (1, 2),
                               'VALID')
    x = jnp.array([[0.9, 0.1, 0.5, 0.25]])
    p = jnp.array([1.0, 1.0, 1.0, 2.0])
    z = cert.propagate(apply_fn, p, x, 0.05)
    lo, hi = jax.vmap(cert.Zonotope.bounds)(z)
    # Pair 1: [0.85, 0.95] dominates [0.05, 0.15]: the output *is* x_1, it
    # keeps x_1's symbol (correlation) and gets no new one.
    np.testing.assert_allclose([lo[0, 0], hi[0, 0]], [0.85, 0.95], atol=1e-6)
    np.testing.assert_allclose(z.generators[0, :, 0],
                               [0.05, 0, 0, 0, 0, 0], atol=1e-7)
    # Pair 2: [0.45, 0.55] and [0.4, 0.6] overlap: the box [max l, max u]
    # = [0.45, 0.6] with one fresh symbol of radius 0.075.
    np.testing.assert_allclose([lo[0, 1], hi[0, 1]], [0.45, 0.6], atol=1e-6)
    np.testing.assert_allclose(z.generators[0, :, 1],
                               [0, 0, 0, 0, 0, 0.075], atol=1e-7)


class EdgeCaseTest(absltest.TestCase):

  def test_relu_relaxation_edge_cases(self):
    lower = jnp.array([-1.0, 0.0, -1.0, 0.0, 0.5, -2.0, -3.0, 2.0])
    upper = jnp.array([0.0, 1.0, 1.0, 0.0, 0.5, -2.0, 1.0, 3.0])
    slope, shift, new_r = cert.relu_relaxation(lower, upper)
    np.testing.assert_allclose(slope, [0, 1, 0.5, 1, 1, 0, 0.25, 1])
    np.testing.assert_allclose(shift, [0, 0, 0.25, 0, 0, 0, 0.375, 0])
    np.testing.assert_array_equal(new_r, shift)
    # Sound: relu(x) in slope x + shift +- new_r on a grid of x in [l, u].
    t = jnp.linspace(0, 1, 101)[:, None]
    xs = lower + t * (upper - lower)
    gap = jax.nn.relu(xs) - (slope * xs + shift)
    self.assertTrue(np.all(jnp.abs(gap) <= new_r + 1e-6))
    g = jax.grad(lambda l, u: sum(jnp.sum(a) for a in
                                  cert.relu_relaxation(l, u)), (0, 1))(
                                      lower, upper)
    self.assertTrue(all(np.all(np.isfinite(a)) for a in g))

  def test_degenerate_network_no_nan(self):
    # Neuron 0: zero weights (l = u = 0); neuron 1: w = 1 (l = 0);
    # neuron 2: w = -1 (u = 0); neuron 3 crosses.
    params = {'w': jnp.array([[0.0, 1.0, -1.0, 1.0]]),
              'b': jnp.array([0.0, 0.0, 0.0, -0.5]),
              'v': jnp.array([[1.0, -1.0], [2.0, 1.0], [0.5, 0.5],
                              [-1.0, 1.0]])}

    def apply_fn(p, x):
      return jax.nn.relu(x @ p['w'] + p['b']) @ p['v']
    x = jnp.array([[0.5]])
    y = jnp.array([0])
    for eps in (0.5, 0.0):
      for domain in ('zonotope', 'interval'):
        lo, hi = cert.logit_difference_bounds(apply_fn, params, x, y, eps,
                                              domain=domain)
        self.assertTrue(np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)))
        loss = lambda p, xx: cert.mean_certifiable_loss(
            apply_fn, p, xx, y, eps, domain=domain)
        gp, gx = jax.grad(loss, (0, 1))(params, x)
        self.assertTrue(all(np.all(np.isfinite(a))
                            for a in jax.tree.leaves((gp, gx))))
    # l = u = 0 and l = 0 are exact (identity); u = 0 is exact (zero).
    z = cert.propagate(lambda p, x: jax.nn.relu(x @ p['w'] + p['b']),
                       params, x, 0.5)
    lo, hi = jax.vmap(cert.Zonotope.bounds)(z)
    np.testing.assert_allclose(lo[0, :3], [0.0, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(hi[0, :3], [0.0, 1.0, 0.0], atol=1e-7)

  def test_eps_zero_and_zero_width_inputs(self):
    for (apply_fn, params), shape in NETS.values():
      x = points(shape)
      logits = apply_fn(params, x)
      for domain in ('zonotope', 'interval'):
        z = cert.propagate(apply_fn, params, x, 0.0, domain=domain)
        lo, hi = jax.vmap(type(z).bounds)(z)
        np.testing.assert_allclose(lo, logits, atol=1e-5)
        np.testing.assert_allclose(hi, logits, atol=1e-5)
    # Features pinned by the valid range (lo = hi) have zero width.
    (apply_fn, params), _ = NETS['dense']
    x = jnp.full((3, 6), 0.5).at[1, :3].set(0.2)
    lo = jnp.array([0.5, 0.5, 0.5, 0.0, 0.0, 0.0])
    hi = jnp.array([0.5, 0.5, 0.5, 1.0, 1.0, 1.0])
    z = cert.propagate(apply_fn, params, x, 0.3, lo=lo, hi=hi)
    np.testing.assert_allclose(z.generators[:, :3], 0.0, atol=1e-7)
    self.assertTrue(np.all(np.isfinite(z.generators)))
    z = cert.propagate(apply_fn, params, x, 0.3, lo=0.5, hi=0.5)
    np.testing.assert_allclose(z.generators, 0.0, atol=1e-7)
    np.testing.assert_allclose(
        z.center, apply_fn(params, jnp.full((3, 6), 0.5)), atol=1e-5)


class GradientTest(absltest.TestCase):

  def test_certifiable_loss_matches_finite_differences(self):
    with jax.enable_x64(True):
      apply_fn, params = dense_net(widths=(4, 6, 5, 3), seed=4)
      params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
      x = points((4,), n=3).astype(jnp.float64)
      y = jnp.array([0, 1, 2])
      eps = 0.1

      def loss(p, xx):
        return cert.mean_certifiable_loss(apply_fn, p, xx, y, eps)
      self.assertGreater(float(loss(params, x)), 0.0)
      gp, gx = jax.grad(loss, (0, 1))(params, x)
      key = jax.random.key(9)
      dp = jax.tree.map(lambda a: jax.random.normal(key, a.shape, a.dtype),
                        params)
      dx = jax.random.normal(key, x.shape, x.dtype) * 0.1
      h = 1e-6
      num = (loss(jax.tree.map(lambda a, d: a + h * d, params, dp), x + h * dx)
             - loss(jax.tree.map(lambda a, d: a - h * d, params, dp),
                    x - h * dx)) / (2 * h)
      ana = sum(jnp.vdot(a, d) for a, d in zip(jax.tree.leaves(gp),
                                               jax.tree.leaves(dp)))
      ana = ana + jnp.vdot(gx, dx)
      np.testing.assert_allclose(float(num), float(ana), rtol=1e-5, atol=1e-8)


class ConvTransposeTest(parameterized.TestCase):
  """The space-to-depth / dense conv transposes against ``jax.vjp``."""

  @parameterized.parameters(
      (13, 5, 3, (2, 1), 1, ('NHWC', 'HWIO', 'NHWC'), 3),  # space-to-depth
      (11, 3, 2, (0, 0), 2, ('NCHW', 'OIHW', 'NCHW'), 3),
      (14, 4, 2, (1, 1), 1, ('NHWC', 'HWIO', 'NHWC'), 1),  # GEMM + shifts
      (9, 3, 1, (0, 2), 1, ('NCHW', 'HWIO', 'NHWC'), 3),
      (6, 5, 1, (0, 0), 1, ('NHWC', 'HWIO', 'NHWC'), 3))   # dense matrix
  def test_transpose_matches_vjp(self, size, k, s, pad, dil, dn, ci):
    from fl_jax.certification import conv_ops  # pylint: disable=g-import-not-at-top
    xs = (1, size, size + 1, ci) if dn[0] == 'NHWC' else (1, ci, size,
                                                          size + 1)
    ks = (k, k - 1, ci, 5) if dn[1] == 'HWIO' else (5, ci, k, k - 1)
    kern = jax.random.normal(jax.random.key(0), ks)
    x = jax.random.normal(jax.random.key(1), xs)
    conv = lambda v: lax.conv_general_dilated(
        v, kern, (s, s), (pad, pad), rhs_dilation=(dil, dil),
        dimension_numbers=dn)
    y, vjp = jax.vjp(conv, x)
    params = dict(window_strides=(s, s), padding=(pad, pad),
                  lhs_dilation=(1, 1), rhs_dilation=(dil, dil),
                  dimension_numbers=lax.conv_dimension_numbers(xs, ks, dn),
                  feature_group_count=1, batch_group_count=1)
    ct = jax.random.normal(jax.random.key(2), (2,) + y.shape)

    @jax.jit
    def check(x, ct):
      c = conv_ops.from_params(params, xs, kern)
      return (c(x), jax.vmap(lambda t: vjp(t)[0])(ct), c.transpose(ct),
              c.abs(jnp.abs(x)), lax.conv_general_dilated(
                  jnp.abs(x), jnp.abs(kern), (s, s), (pad, pad),
                  rhs_dilation=(dil, dil), dimension_numbers=dn))
    fwd, ref_t, got_t, got_abs, ref_abs = check(x, ct)
    np.testing.assert_allclose(fwd, y, atol=1e-4)
    np.testing.assert_allclose(got_t, ref_t, atol=1e-4)
    np.testing.assert_allclose(got_abs, ref_abs, atol=1e-4)


  @parameterized.parameters((((1, 1), (1, 1)), (2, 2)), (((0, 2), (1, 0)), (3, 1)),
                            (((2, 1),), (3,)))
  def test_stride1_conv_gradients(self, pads, taps):
    # conv_stride1 has a hand-written VJP (per-tap GEMMs): both cotangents
    # against autodiff of XLA's conv.
    from fl_jax.certification import conv_ops  # pylint: disable=g-import-not-at-top
    n = len(pads)
    x = jax.random.normal(jax.random.key(0), (3,) + (6, 5)[:n] + (4,))
    k = jax.random.normal(jax.random.key(1), taps + (4, 7))
    y = conv_ops.conv_stride1(x, k, pads)
    ct = jax.random.normal(jax.random.key(2), y.shape)
    ref = lambda a, b: lax.conv_general_dilated(
        a, b, (1,) * n, pads, dimension_numbers=conv_ops._nhwc_dn(n),  # pylint: disable=protected-access
        precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(y, ref(x, k), rtol=1e-5, atol=1e-5)
    got = jax.vjp(lambda a, b: conv_ops.conv_stride1(a, b, pads), x, k)[1](ct)
    want = jax.vjp(ref, x, k)[1](ct)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


class LocalChainTest(parameterized.TestCase):
  """Radii by local (patch) pulls through conv chains equal the textbook ones."""

  @parameterized.parameters(
      # (image, channels, [(kernel, stride, pad lo, pad hi, out channels)], via im2col)
      (12, 2, [(3, 1, 1, 1, 4), (4, 2, 1, 1, 5), (3, 1, 1, 1, 3)], False),
      (11, 1, [(4, 2, 1, 1, 3), (4, 2, 1, 1, 4)], True),
      (10, 3, [(3, 2, 0, 2, 3), (2, 1, 1, 0, 4), (3, 2, 2, 1, 2)], False))
  def test_local_pull_matches_forward_order(self, size, cin, spec, im2col):
    from fl_jax.certification import local_chain  # pylint: disable=g-import-not-at-top
    from fl_jax.models.layers import conv2d  # pylint: disable=g-import-not-at-top
    keys = jax.random.split(jax.random.key(len(spec)), len(spec) + 1)
    params, c = [], cin
    for key, (k, _, _, _, co) in zip(keys, spec):
      params.append((0.4 * jax.random.normal(key, (k, k, c, co)),
                     0.1 * jax.random.normal(jax.random.fold_in(key, 1), (co,))))
      c = co

    def apply_fn(ps, x):
      h = x
      for (kern, b), (_, st, lo, hi, _) in zip(ps, spec):
        if im2col and lo == hi:
          h = conv2d(h, kern, b, (st, st), (lo, lo), 'patches')
        else:
          h = lax.conv_general_dilated(h, kern, (st, st), ((lo, hi), (lo, hi)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b
        h = jax.nn.relu(h)
      return h.reshape(h.shape[0], -1)[:, :6]

    calls = []
    real_radius, real_rows = local_chain.local_radius, local_chain.local_rows
    with mock.patch.object(local_chain, 'local_radius',
                           lambda *a: calls.append(len(a[0])) or real_radius(*a)), \
         mock.patch.object(local_chain, 'local_rows',
                           lambda *a: calls.append(len(a[0])) or real_rows(*a)):
      x = points((size, size, cin), n=2)
      for eps in (0.02, 0.2):
        zs = [cert.propagate(apply_fn, params, x, eps, strategy=s)
              for s in ('auto', 'forward')]
        np.testing.assert_allclose(zs[0].center, zs[1].center, atol=TOL)
        np.testing.assert_allclose(jnp.abs(zs[0].generators).sum(1),
                                   jnp.abs(zs[1].generators).sum(1), rtol=1e-5, atol=TOL)
    # The deepest conv's bounds came from a local pull over the whole chain.
    self.assertIn(len(spec), calls)


class ApiTest(absltest.TestCase):

  def test_unsupported_primitive_is_named(self):
    for fn, name in ((jnp.sin, 'sin'), (jnp.tanh, 'tanh'),
                     (jax.nn.sigmoid, 'logistic')):
      with self.assertRaisesRegex(NotImplementedError, name):
        cert.propagate(lambda p, x: fn(x * p), 1.0, jnp.ones((1, 3)), 0.1)
    with self.assertRaisesRegex(NotImplementedError, 'mul'):
      cert.propagate(lambda p, x: x * x * p, 1.0, jnp.ones((1, 3)), 0.1)

  def test_bad_arguments(self):
    apply_fn, params = dense_net()
    x = points((6,), n=2)
    y = jnp.array([0, 1])
    with self.assertRaisesRegex(ValueError, 'domain'):
      cert.certify(apply_fn, params, x, y, 0.1, domain='polyhedra')
    with self.assertRaisesRegex(ValueError, 'eps'):
      cert.certify(apply_fn, params, x, y, -0.1)
    with self.assertRaisesRegex(ValueError, 'y must have shape'):
      cert.certify(apply_fn, params, x, jnp.array([0, 1, 2]), 0.1)
    with self.assertRaisesRegex(ValueError, 'chunk_size'):
      cert.certify(apply_fn, params, x, y, 0.1, chunk_size=0)

  def test_no_retrace_and_chunking(self):
    base, params, apply_fn, traces = counting_dense_net()
    x = points((6,), n=7)
    y = jnp.argmax(base(params, x), axis=1)
    r1 = cert.certify(apply_fn, params, x, y, 0.1, chunk_size=3)
    n_traces = len(traces)
    r2 = cert.certify(apply_fn, params, x + 0.01, y, 0.2, chunk_size=3)
    jax.block_until_ready(r2)
    self.assertEqual(len(traces), n_traces)         # no retrace
    for chunk in (1, None):
      r = cert.certify(apply_fn, params, x, y, 0.1, chunk_size=chunk)
      np.testing.assert_array_equal(r.certified, r1.certified)
      np.testing.assert_array_equal(r.correct, r1.correct)
      np.testing.assert_allclose(r.loss, r1.loss, rtol=1e-6, atol=1e-6)
    acc = cert.certified_accuracy(apply_fn, params, x, y, 0.1, chunk_size=3)
    self.assertAlmostEqual(float(acc), float(np.mean(r1.certified & r1.correct)))
    self.assertAlmostEqual(
        float(cert.mean_certifiable_loss(apply_fn, params, x, y, 0.1,
                                         chunk_size=3)),
        float(jnp.mean(r1.loss)), places=5)

  def test_every_contraction_runs_in_full_float32(self):
    # The models ask for the default precision (TF32 / bf16 passes on GPU and
    # TPU); the bounds and their gradients must not inherit it.
    def contractions(jaxpr, out):
      for eqn in jaxpr.eqns:
        if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
          out.append(eqn.params['precision'])
        for sub in jex_core.jaxprs_in_params(eqn.params):
          contractions(sub, out)
      return out

    from fl_jax.certification import conv_ops  # pylint: disable=g-import-not-at-top
    k = jax.random.split(jax.random.key(5), 3)
    params = {'c': 0.4 * jax.random.normal(k[0], (3, 3, 3, 4)),
              'd1': 0.3 * jax.random.normal(k[1], (4 * 4 * 4, 6)),
              'd2': 0.3 * jax.random.normal(k[2], (6, 3))}

    def apply_fn(p, x):      # stride 2, 3 channels: the space-to-depth pull
      h = jax.nn.relu(lax.conv_general_dilated(
          x, p['c'], (2, 2), ((1, 1), (1, 1)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      return jax.nn.relu(h.reshape(h.shape[0], -1) @ p['d1']) @ p['d2']
    x = points((8, 8, 3), n=2)
    model_prec = contractions(jax.make_jaxpr(apply_fn)(params, x).jaxpr, [])
    self.assertIn(None, model_prec)

    def loss(p, x):
      return jnp.sum(cert.certify(apply_fn, p, x, jnp.array([0, 1]), 0.1).loss)
    with mock.patch.object(conv_ops, 'conv_stride1',
                           wraps=conv_ops.conv_stride1) as s2d:
      jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(params, x)
    self.assertGreater(s2d.call_count, 0)
    precs = contractions(jaxpr.jaxpr, [])
    self.assertGreater(len(precs), 4)
    highest = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
    self.assertEqual([p for p in precs if p != highest], [])

  def test_jit_and_vmap_compose(self):
    apply_fn, params = dense_net()
    x = points((6,), n=2)
    y = jnp.array([0, 2])
    f = jax.jit(lambda p, e: cert.mean_certifiable_loss(apply_fn, p, x, y, e))
    a = f(params, 0.1)
    per_eps = jax.vmap(lambda e: f(params, e))(jnp.array([0.05, 0.1]))
    np.testing.assert_allclose(per_eps[1], a, rtol=1e-6)
    self.assertLessEqual(float(per_eps[0]), float(per_eps[1]) + 1e-6)


class FlJaxModelsTest(absltest.TestCase):
  """The registered models as they are (benchmarks/certify.py runs the
  full-size MNIST and CIFAR-10 CNNs)."""

  def test_mnist_cnn_im2col_conv(self):
    # The CPU default conv of fl_jax.models (pad -> strided slices ->
    # concatenate -> dense) is recognised as one conv; same bounds as the
    # lax.conv_general_dilated form of the same weights.
    key = jax.random.key(0)
    shape = (12, 12, 1)          # same layers as on 28 x 28, smaller maps
    x = points(shape, n=2)
    y = jnp.array([3, 7])
    m = models.get_model('mnist_cnn', shape, 10, conv_impl='patches')
    m_xla = models.get_model('mnist_cnn', shape, 10, conv_impl='xla')
    params = random_params(m)
    lo, hi = cert.logit_difference_bounds(m.apply, params, x, y, 0.01)
    xs = box_samples(x[0], 0.01, 30, key)
    d = jax.jit(m_xla.apply)(params, xs)
    d = d - d[:, 3:4]
    self.assertTrue(np.all(d <= hi[0] + 1e-4) and np.all(d >= lo[0] - 1e-4))
    # eps = 0: the bounds collapse onto the model's logit differences.
    lo0, hi0 = cert.logit_difference_bounds(m.apply, params, x, y, 0.0)
    z = jax.jit(m_xla.apply)(params, x)
    d0 = z - jnp.take_along_axis(z, y[:, None], 1)
    np.testing.assert_allclose(lo0, d0, atol=1e-4)
    np.testing.assert_allclose(hi0, d0, atol=1e-4)

  def test_lenet5_max_pooling_sound(self):
    name, shape, domain = 'lenet5', (12, 12, 1), 'zonotope'
    m = models.get_model(name, shape, 10, conv_impl='xla')
    params = random_params(m, seed=1)
    x = points(shape, n=1)
    y = jnp.argmax(jax.jit(m.apply)(params, x), axis=1)
    lo, hi = cert.logit_difference_bounds(m.apply, params, x, y, 0.005,
                                          domain=domain)
    xs = box_samples(x[0], 0.005, 40, jax.random.key(2))
    d = jax.jit(m.apply)(params, xs)
    d = d - d[:, y[0]][:, None]
    scale = 1e-5 * float(jnp.max(jnp.abs(hi))) + 1e-4
    self.assertTrue(np.all(d <= hi[0] + scale) and np.all(d >= lo[0] - scale))


def nchw_chain_net(seed=6):
  """The same conv -> relu -> conv -> relu -> dense net written two ways.

  ``nhwc``: NHWC / HWIO convs with explicit padding, flatten in (H, W, C)
  order; ``nchw``: a PyTorch-style port, NCHW / OIHW, ``jnp.pad`` then a
  VALID conv, flatten in (C, H, W) order, the dense weight's rows permuted
  to match. Same function of the (transposed) input.
  """
  k = jax.random.split(jax.random.key(seed), 4)
  c1 = 0.5 * jax.random.normal(k[0], (3, 3, 1, 3))
  c2 = 0.4 * jax.random.normal(k[1], (3, 3, 3, 4))
  d = 0.3 * jax.random.normal(k[2], (2 * 2 * 4, 6))
  e = 0.4 * jax.random.normal(k[3], (6, 3))
  p_nhwc = {'c1': c1, 'c2': c2, 'd': d, 'e': e}
  p_nchw = {'c1': jnp.transpose(c1, (3, 2, 0, 1)),
            'c2': jnp.transpose(c2, (3, 2, 0, 1)),
            'd': d.reshape(2, 2, 4, 6).transpose(2, 0, 1, 3).reshape(16, 6),
            'e': e}

  def nhwc(p, x):                                    # x [B, 8, 8, 1]
    dn = ('NHWC', 'HWIO', 'NHWC')
    h = jax.nn.relu(lax.conv_general_dilated(x, p['c1'], (2, 2), ((1, 1),) * 2,
                                             dimension_numbers=dn))
    h = jax.nn.relu(lax.conv_general_dilated(h, p['c2'], (2, 2), ((1, 1),) * 2,
                                             dimension_numbers=dn))
    return jax.nn.relu(h.reshape(h.shape[0], -1) @ p['d']) @ p['e']

  def nchw(p, x):                                    # x [B, 1, 8, 8]
    dn = ('NCHW', 'OIHW', 'NCHW')
    h = x
    for name in ('c1', 'c2'):
      h = jnp.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
      h = jax.nn.relu(lax.conv_general_dilated(h, p[name], (2, 2), 'VALID',
                                               dimension_numbers=dn))
    return jax.nn.relu(h.reshape(h.shape[0], -1) @ p['d']) @ p['e']
  return (nhwc, p_nhwc), (nchw, p_nchw)


class PlannerTest(parameterized.TestCase):

  def test_forced_order_is_reported_and_cheapest_by_default(self):
    (apply_fn, params), shape = NETS['conv']
    auto = cert.explain(apply_fn, params, shape)
    self.assertNotEmpty([q for q in auto.queries if q.order is not None])
    for q in auto.queries:
      if q.order is None:
        continue
      self.assertFalse(q.forced)
      fitting = [c for c, ok in q.costs.values() if ok]
      self.assertEqual(q.cost, min(fitting))     # the cheapest that fits
      self.assertEqual(q.costs[q.order][0], q.cost)
    for strategy in cert.ORDER_NAMES:
      plan = cert.explain(apply_fn, params, shape, strategy=strategy)
      for q in plan.queries:
        if q.order is None:
          continue
        if strategy in q.costs:                  # applies: it is what runs
          self.assertEqual(q.order, strategy)
          self.assertTrue(q.forced)
        else:                                    # does not: said so
          self.assertIn('forced, but does not apply', q.others[strategy])
    self.assertIn('forced', str(cert.explain(apply_fn, params, shape,
                                             strategy='backward')))

  def test_planner_never_picks_an_order_over_the_memory_budget(self):
    (nhwc, params), _ = nchw_chain_net()
    rejected = 0
    for budget in (1 << 26, 3000, 600, 50):
      plan = cert.explain(nhwc, params, (8, 8, 1), max_block_elems=budget)
      for q in plan.queries:
        if q.order is None:
          continue
        self.assertTrue(q.elastic or q.mem <= plan.budget, q)
        rejected += sum('over the budget' in w for w in q.others.values())
    self.assertGreater(rejected, 0)              # the test has teeth

  def test_layouts_reach_the_same_plan_and_bounds(self):
    (nhwc, p_nhwc), (nchw, p_nchw) = nchw_chain_net()
    plan_a = cert.explain(nhwc, p_nhwc, (8, 8, 1))
    plan_b = cert.explain(nchw, p_nchw, (1, 8, 8))
    self.assertEqual([q.order for q in plan_a.queries],
                     [q.order for q in plan_b.queries])
    self.assertIn('windowed', plan_b.queries[-1].costs)   # reaches NCHW too
    self.assertIn('local', plan_b.queries[1].costs)
    x = points((8, 8, 1), n=3)
    y = jnp.array([0, 1, 2])
    a = cert.certificate(nhwc, p_nhwc, x, y, 0.05)
    b = cert.certificate(nchw, p_nchw, jnp.transpose(x, (0, 3, 1, 2)), y, 0.05)
    for u, v in zip(a, b):
      np.testing.assert_allclose(u, v, rtol=1e-5, atol=TOL)

  def test_default_chunking_fits_the_budget(self):
    (apply_fn, params), shape = NETS['conv']
    plan = cert.explain(apply_fn, params, shape, num_points=100)
    self.assertGreater(plan.chunk_size, 1)
    self.assertGreaterEqual(plan.num_points, 100)
    self.assertEqual(plan.num_points % plan.chunk_size, 0)
    small = cert.explain(apply_fn, params, shape, num_points=100,
                         max_block_elems=4000)
    self.assertLess(small.chunk_size, plan.chunk_size)
    for q in small.queries:
      if q.order is not None and not q.elastic:
        self.assertLessEqual(q.mem * small.chunk_size, 4000)


class CombinedCallTest(absltest.TestCase):

  def test_certificate_is_all_three_calls_in_one(self):
    (apply_fn, params), shape = NETS['conv']
    x = points(shape, n=3)
    y = jnp.array([0, 1, 2])
    c = cert.certificate(apply_fn, params, x, y, 0.05)
    r = cert.certify(apply_fn, params, x, y, 0.05)
    d_lo, d_hi = cert.logit_difference_bounds(apply_fn, params, x, y, 0.05)
    lo, hi = jax.vmap(cert.Zonotope.bounds)(
        cert.propagate(apply_fn, params, x, 0.05))
    np.testing.assert_array_equal(c.certified, r.certified)
    np.testing.assert_array_equal(c.correct, r.correct)
    np.testing.assert_allclose(c.loss, r.loss, rtol=1e-6)
    np.testing.assert_allclose(c.diff_upper, d_hi, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c.diff_lower, d_lo, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c.logit_lower, lo, rtol=1e-5, atol=TOL)
    np.testing.assert_allclose(c.logit_upper, hi, rtol=1e-5, atol=TOL)
    m = c.margin_upper()
    np.testing.assert_array_equal(m[jnp.arange(3), y], -jnp.inf)
    np.testing.assert_array_equal(c.certified, jnp.max(m, 1) < 0)

  def test_labels_outside_the_classes_are_named(self):
    apply_fn, params = dense_net()                 # 3 classes
    x = points((6,), n=3)
    for bad, where in (([0, 3, 1], 'y\\[1\\] = 3'),
                       ([-1, 0, 1], 'y\\[0\\] = -1')):
      for fn in (cert.certify, cert.certificate, cert.logit_difference_bounds,
                 cert.mean_certifiable_loss):
        with self.assertRaisesRegex(ValueError, where):
          fn(apply_fn, params, x, jnp.array(bad), 0.1)

  def test_no_recompile_for_eps_types_and_point_counts(self):
    base, params, apply_fn, traces = counting_dense_net()
    x = points((6,), n=34)
    y = jnp.argmax(base(params, x), axis=1)
    r = cert.certify(apply_fn, params, x, y, 0.1)
    n_traces = len(traces)
    r_j = cert.certify(apply_fn, params, x, y, jnp.float32(0.1))
    r_33 = cert.certify(apply_fn, params, x[:33], y[:33], jnp.asarray(0.1))
    jax.block_until_ready((r_j, r_33))
    self.assertEqual(len(traces), n_traces)          # one compilation
    np.testing.assert_array_equal(r_j.certified, r.certified)
    np.testing.assert_allclose(r_33.loss, r.loss[:33], rtol=1e-6)
    self.assertEqual(r_33.loss.shape, (33,))


if __name__ == '__main__':
  absltest.main()
