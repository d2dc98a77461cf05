"""Tests for the windowed order of dense layers over conv chains.

``fl_jax.certification.windowed`` forms a dense layer's radii block by
block in forward order (pooling the sparse ReLU symbols of a chunk's
points); it must give the same numbers as the backward (adjoint) order,
whatever the geometry, the chunking and the width it picks.
"""
import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fl_jax import certification as cert
from fl_jax.certification import linear_graph
from fl_jax.certification import propagation
from fl_jax.certification import windowed

TOL = 2e-5


def chain_dense_net(size, cin, spec, n_hidden=12, n_out=4, nchw=False, seed=0):
  """conv chain (``spec``: (kernel, stride, pad, c_out)) -> relu -> dense."""
  keys = jax.random.split(jax.random.key(seed), len(spec) + 2)
  params, c, h = {}, cin, size
  for i, (k, st, pad, co) in enumerate(spec):
    params[f'k{i}'] = 0.5 * jax.random.normal(keys[i], (k, k, c, co)) / k
    params[f'b{i}'] = 0.1 * jax.random.normal(jax.random.fold_in(keys[i], 1),
                                              (co,))
    c, h = co, (h + 2 * pad - k) // st + 1
  params['d1'] = jax.random.normal(keys[-2], (h * h * c, n_hidden)) / np.sqrt(
      h * h * c)
  params['d2'] = jax.random.normal(keys[-1], (n_hidden, n_out)) / np.sqrt(
      n_hidden)

  def apply(p, x):
    z = x
    for i, (_, st, pad, _) in enumerate(spec):
      z = lax.conv_general_dilated(z, p[f'k{i}'], (st, st),
                                   ((pad, pad), (pad, pad)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      z = jax.nn.relu(z + p[f'b{i}'])
    if nchw:                       # PyTorch-style flatten (channels first)
      z = jnp.transpose(z, (0, 3, 1, 2))
    z = jax.nn.relu(z.reshape(z.shape[0], -1) @ p['d1'])
    return z @ p['d2']
  return apply, params


def points(shape, n, seed=3):
  return jax.random.uniform(jax.random.key(seed), (n,) + shape)


class WindowedOrderTest(parameterized.TestCase):

  @parameterized.parameters(
      # size, cin, spec, nchw, chunk
      (12, 1, [(4, 2, 1, 4), (4, 2, 1, 6)], False, 3),     # the MNIST CNN's
      (11, 2, [(3, 1, 1, 3), (3, 2, 0, 5)], True, 4),
      (9, 3, [(3, 2, 1, 4)], False, 1),
      (10, 1, [(2, 2, 0, 3), (3, 1, 1, 4), (2, 2, 1, 5)], False, 2))
  def test_matches_backward_order(self, size, cin, spec, nchw, chunk):
    apply_fn, params = chain_dense_net(size, cin, spec, nchw=nchw)
    x = points((size, size, cin), n=5)
    y = jnp.arange(5) % 4
    calls = []
    real = windowed.radius
    with mock.patch.object(windowed, 'radius',
                           lambda *a, **k: calls.append(1) or real(*a, **k)):
      for eps in (0.01, 0.05, 0.3):    # few, some and most ReLUs crossing
        lo, up = cert.logit_difference_bounds(apply_fn, params, x, y, eps,
                                              chunk_size=chunk)
        lo_b, up_b = cert.logit_difference_bounds(
            apply_fn, params, x, y, eps, chunk_size=chunk, strategy='backward')
        np.testing.assert_allclose(up, up_b, rtol=1e-5, atol=TOL)
        np.testing.assert_allclose(lo, lo_b, rtol=1e-5, atol=TOL)
    self.assertNotEmpty(calls)         # the windowed order did run

  def test_every_width_gives_the_same_radius(self):
    # Only the full width (no compaction), every width, the default widths
    # and one width for all blocks give the same generators.
    apply_fn, params = chain_dense_net(12, 1, [(4, 2, 1, 4), (4, 2, 1, 6)])
    x = points((12, 12, 1), n=6)
    runs = []
    real = windowed._widths
    for widths in (lambda full, _: [full],
                   lambda full, _: list(range(full + 1)), real):
      with mock.patch.object(windowed, '_widths', widths):
        jax.clear_caches()
        runs.append(cert.propagate(apply_fn, params, x, 0.02, chunk_size=3))
    # One width for all blocks (the default on accelerators).
    with mock.patch.object(windowed, 'radius', functools.partial(
        windowed.radius, per_block=False)):
      jax.clear_caches()
      runs.append(cert.propagate(apply_fn, params, x, 0.02, chunk_size=3))
    for run in runs[1:]:
      np.testing.assert_allclose(run.generators, runs[0].generators,
                                 rtol=1e-5, atol=TOL)

  def test_without_a_named_axis(self):
    # One point at a time under a plain vmap: the width switch sees batched
    # counts (a select), and the numbers stay the same.
    apply_fn, params = chain_dense_net(12, 1, [(4, 2, 1, 4), (4, 2, 1, 6)])
    x = points((12, 12, 1), n=3)
    y = jnp.zeros((3,), jnp.int32)
    closed = propagation._output_of(apply_fn, params, (12, 12, 1), jnp.float32)
    opts = propagation.Options('zonotope', 'auto', 1, 1 << 24, True)
    budget = linear_graph.Budget('auto', 1 << 24, 1 << 20, None)

    def one(xi, yi):
      return propagation._one_point(
          closed, apply_fn, params, xi, yi, 0.05, 0.0, 1.0, opts,
          budget).diff_upper
    up = jax.vmap(one)(x, y)
    _, up_b = cert.logit_difference_bounds(apply_fn, params, x, y, 0.05,
                                           strategy='backward')
    np.testing.assert_allclose(up, up_b, rtol=1e-5, atol=TOL)

  def test_gradient_matches_backward_order(self):
    apply_fn, params = chain_dense_net(12, 1, [(4, 2, 1, 4), (4, 2, 1, 6)])
    x = points((12, 12, 1), n=4)
    y = jnp.arange(4) % 4

    def loss(p, strategy):
      return cert.mean_certifiable_loss(apply_fn, p, x, y, 0.05, chunk_size=2,
                                        strategy=strategy)
    g = jax.grad(loss)(params, 'auto')
    g_b = jax.grad(loss)(params, 'backward')
    for k in g:
      self.assertTrue(np.all(np.isfinite(g[k])), k)
      np.testing.assert_allclose(g[k], g_b[k], rtol=1e-4, atol=1e-4,
                                 err_msg=k)



class PiecesTest(absltest.TestCase):

  def test_axis_blocks_of_the_mnist_cnn(self):
    # Input pixels, total stride 4, pad 3, receptive field 10, 7 outputs:
    # blocks of pixels [4b, 4b + 3] reach outputs b - 1, b, b + 1.
    ax = windowed._axis_blocks(28, 7, 4, 3, 10)
    self.assertEqual((ax.offset, ax.n_blocks, ax.lo, ax.n_win, ax.shift),
                     (0, 7, -1, 3, 7))
    # First-layer neurons, stride 2, pad 1, window 4: pairs [2b - 1, 2b]
    # reach outputs b - 1 and b only.
    ax = windowed._axis_blocks(14, 7, 2, 1, 4)
    self.assertEqual((ax.offset, ax.n_blocks, ax.lo, ax.n_win), (-1, 8, -1, 2))

  def test_compact_keeps_the_first_marked_columns(self):
    mask = jnp.array([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]],
                     bool)
    got = windowed._compact(mask, 3)
    np.testing.assert_array_equal(got, [[1, 2, 4], [5, 5, 5], [0, 1, 2]])

  def test_block_radius_keeps_exactly_the_marked_columns(self):
    # sum_b |W_b X_b| per point (columns m belong to point m % P), against a
    # plain sum, with zero columns dropped at every width; a mask that drops
    # a non-zero column must change the sum.
    nb, n_out, k_dim, n_dim, n_pts = 3, 5, 4, 6, 2
    key = jax.random.key(7)
    wg = jax.random.normal(key, (nb, n_out, k_dim))
    cols = jax.random.normal(jax.random.fold_in(key, 1),
                             (nb, k_dim, n_dim * n_pts))
    keep = np.array([[1] * 12, [1, 0] * 6, [0] * 11 + [1]], bool)
    cols = cols * keep[:, None, :]
    want = np.zeros((n_out, n_pts))
    for b in range(nb):
      prod = np.abs(np.asarray(wg[b]) @ np.asarray(cols[b]))
      for m in range(n_dim * n_pts):
        want[:, m % n_pts] += prod[:, m]

    def fetch(cb, sel):
      return cb if sel is None else jnp.take(cb, jnp.minimum(sel, 11), 1)
    for widths in ([0, 12], [0, 1, 2, 4, 8, 12], list(range(13))):
      for per_block in (True, False):
        got = windowed._block_radius(lambda b: wg[b], jnp.asarray(keep),
                                     n_pts, fetch, cols, widths,
                                     per_block=per_block)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    short = keep.copy()
    short[1, 2] = False
    got = windowed._block_radius(lambda b: wg[b], jnp.asarray(short), n_pts,
                                 fetch, cols, [0, 1, 2, 4, 8, 12])
    self.assertGreater(np.max(np.abs(np.asarray(got) - want)), 1e-3)

  def test_reported_widths_are_the_picked_ones(self):
    # Blocks holding 11, 6 and 0 columns run at widths 12 (full), 8 and 0
    # (widths [0, 4, 8, 12]).
    nb, n_out, k_dim, n_pts = 3, 5, 4, 2
    wg = jnp.ones((nb, n_out, k_dim))
    cols = jnp.ones((nb, k_dim, 12))
    keep = np.zeros((nb, 12), bool)
    keep[0, :11] = True
    keep[1, :6] = True
    sink = []
    with windowed.report_block_widths(sink.append):
      jax.block_until_ready(jax.jit(
          lambda w, c: windowed._block_radius(
              lambda b: w[b], jnp.asarray(keep), n_pts, lambda cb, s: cb if s is None
              else jnp.take(cb, jnp.minimum(s, 11), 1), c, [0, 4, 8, 12],
              report=True))(wg, cols))
      jax.effects_barrier()
    (g,) = sink   # reported once per call, with the width each block ran at
    self.assertEqual((g.n_out, g.k_dim, g.n_pts, g.full), (n_out, k_dim, n_pts, 12))
    self.assertEqual([g.widths[i] for i in g.picked], [12, 8, 0])
    # One width for all blocks: the fullest (12) three times.
    sink.clear()
    with windowed.report_block_widths(sink.append):
      jax.block_until_ready(jax.jit(
          lambda w, c: windowed._block_radius(
              lambda b: w[b], jnp.asarray(keep), n_pts, lambda cb, s: cb
              if s is None else jnp.take(cb, jnp.minimum(s, 11), 1), c,
              [0, 4, 8, 12], report=True, per_block=False))(wg, cols))
      jax.effects_barrier()
    self.assertEqual([sink[0].widths[i] for i in sink[0].picked], [12, 12, 12])

  def test_rows_radius_of_factors(self):
    # sum over the window of |ct * bw|, with negative radii factors (a
    # negative scale between a source and its conv), both forms.
    from fl_jax.certification import local_chain  # pylint: disable=g-import-not-at-top
    key = jax.random.key(11)
    ct = jax.random.normal(key, (5, 3, 2, 2, 4))
    bw = jax.random.normal(jax.random.fold_in(key, 1), (5, 2, 2, 4))
    want = np.abs(np.asarray(ct) * np.asarray(bw)[:, None]).sum((2, 3, 4))
    for top in (True, False):
      np.testing.assert_allclose(local_chain.rows_radius(ct, bw, top), want,
                                 rtol=1e-5, atol=1e-6)

  def test_widths(self):
    self.assertEqual(windowed._widths(400),
                     [0, 8, 16, 24, 40, 64, 96, 136, 200, 288, 400])
    self.assertEqual(windowed._widths(3), [0, 3])
    self.assertEqual(windowed._widths(8), [0, 8])
    self.assertEqual(windowed._widths(1600, per_block=False),
                     [0, 50, 100, 200, 400, 800, 1600])


if __name__ == '__main__':
  absltest.main()
