"""Contract suite over every aggregation rule, plus hand-computed cases."""
import math

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import aggregators as A
from fl_jax.aggregators import _order_stats

C = 12  # clients in the contract suite (even; f = 1 allows Bulyan down to 7)

RULES = {
    'mean': A.weighted_mean,
    'median_network': lambda: A.median('network'),
    'median_bisect': lambda: A.median('bisect'),
    'trimmed_mean': lambda: A.trimmed_mean(0.2),
    'krum': lambda: A.krum(1),
    'multi_krum': lambda: A.multi_krum(1, m=4),
    'bulyan': lambda: A.bulyan(1),
    'geometric_median': lambda: A.geometric_median(tol=1e-30, max_iters=50),  # fixed count
    'clip_median_noise': lambda: A.build('median', norm_bound=3.0, dp_sigma=0.1, seed=3),
}
_BUILT = {}


def rule(name):
  """``(aggregator, jitted update)``, built once per rule so compilations are reused."""
  if name not in _BUILT:
    agg = RULES[name]()
    _BUILT[name] = (agg, jax.jit(agg.update))
  return _BUILT[name]
WEIGHTED = ('mean', 'multi_krum', 'geometric_median')
# The Weiszfeld map contracts slowly on this set, so float32 round-off moves its
# fixed point by ~1e-4 (the objective agrees to 1e-7); other rules are exact
# up to float32 summation order.
ATOL = {'geometric_median': 1e-3}
CASES = [dict(testcase_name=k, name=k) for k in RULES]


def make_tree(num, seed=0):
  """Nested dict with 0-d, 1-d (bfloat16) and 3-d leaves per client, clients on varied scales."""
  rng = np.random.default_rng(seed)
  scale = rng.uniform(0.5, 2.0, size=(num, 1))
  g = lambda *s: (rng.normal(size=(num,) + s) * scale.reshape((num,) + (1,) * len(s)))
  return {'s': jnp.asarray(rng.normal(size=(num,)) * scale[:, 0], jnp.float32),
          'nest': {'v': jnp.asarray(g(3), jnp.bfloat16),
                   'w': jnp.asarray(g(2, 3, 2), jnp.float32)}}


def take(tree, idx):
  return jax.tree.map(lambda x: x[np.asarray(idx)], tree)


def run(name_or_agg, tree, weights, jit=True):
  if isinstance(name_or_agg, str):
    agg, jitted = rule(name_or_agg)
  else:
    agg, jitted = name_or_agg, jax.jit(name_or_agg.update)
  fn = jitted if jit else agg.update
  return fn(tree, weights, agg.init(take(tree, 0)))


def assert_tree_close(test, a, b, atol=1e-5, rtol=1e-5):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    test.assertEqual(x.dtype, y.dtype)
    tol = dict(atol=1e-2, rtol=1e-2) if x.dtype == jnp.bfloat16 else dict(atol=atol, rtol=rtol)
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), **tol)


class ContractTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_jit_matches_eager(self, name):
    tree, w = make_tree(C), jnp.arange(1.0, C + 1)
    out_j, w_j, _, d_j = run(name, tree, w, jit=True)
    with jax.disable_jit():
      out_e, w_e, _, d_e = run(name, tree, w, jit=False)
    assert_tree_close(self, out_j, out_e)
    np.testing.assert_allclose(w_j, w_e, rtol=1e-6)
    self.assertEqual(sorted(d_j), sorted(d_e))

  @parameterized.named_parameters(*CASES)
  def test_permutation_invariance(self, name):
    tree = make_tree(C, seed=1)
    perm = np.random.default_rng(5).permutation(C)
    weight_sets = [jnp.ones((C,))]
    if name in WEIGHTED:
      weight_sets.append(jnp.asarray(np.random.default_rng(6).integers(1, 9, C), jnp.float32))
    for w in weight_sets:
      out, ow, _, _ = run(name, tree, w)
      out_p, ow_p, _, _ = run(name, take(tree, perm), w[perm])
      assert_tree_close(self, out, out_p, atol=ATOL.get(name, 1e-5))
      np.testing.assert_allclose(ow, ow_p, rtol=1e-6)

  @parameterized.named_parameters(*CASES)
  def test_all_equal_inputs_return_that_input(self, name):
    row = take(make_tree(1, seed=2), 0)
    tree = jax.tree.map(lambda x: jnp.broadcast_to(x, (C,) + x.shape), row)
    w = jnp.asarray(np.random.default_rng(3).integers(1, 9, C), jnp.float32)
    out, _, _, _ = run(name, tree, w)
    expected = jax.tree.map(lambda x: x[None], row)
    if name.startswith('clip'):  # clipped to norm 3 first
      norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(row)))
      scale = min(1.0, 3.0 / norm)
      expected = jax.tree.map(lambda x: (x.astype(jnp.float32) * scale).astype(x.dtype), expected)
    if name.endswith('noise'):   # then the seeded noise of the last stage
      expected = run(A.gaussian_noise(0.1, seed=3), expected, jnp.ones((1,)))[0]
    assert_tree_close(self, out, expected, atol=1e-6)

  @parameterized.named_parameters(*CASES)
  def test_pytree_shapes_dtypes_and_state(self, name):
    agg = rule(name)[0]
    tree = make_tree(C, seed=4)
    state0 = agg.init(take(tree, 0))
    out, ow, state1, diag = rule(name)[1](tree, jnp.ones((C,)), state0)
    self.assertEqual(jax.tree.structure(out), jax.tree.structure(tree))
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
      self.assertEqual(x.shape, (1,) + y.shape[1:])
      self.assertEqual(x.dtype, y.dtype)
      self.assertTrue(np.all(np.isfinite(np.asarray(x, np.float32))))
    self.assertEqual(ow.shape, (1,))
    self.assertEqual(jax.tree.structure(state1), jax.tree.structure(state0))
    for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state0)):
      self.assertEqual((a.shape, a.dtype), (b.shape, b.dtype))
    self.assertIsInstance(diag, dict)
    # the one-row result is what aggregate() hands to the server
    upd, _, _ = A.aggregate(A.Aggregator(agg.init, rule(name)[1]), tree, jnp.ones((C,)), state0)
    self.assertEqual(jax.tree.structure(upd), jax.tree.structure(take(tree, 0)))

  @parameterized.named_parameters(*CASES)
  def test_nonfinite_and_zero_weight_clients_excluded(self, name):
    tree = make_tree(C, seed=7)
    w = jnp.asarray(np.random.default_rng(8).integers(1, 9, C), jnp.float32)
    bad = dict(tree)
    bad['s'] = tree['s'].at[2].set(jnp.nan)
    bad['nest'] = dict(tree['nest'], w=tree['nest']['w'].at[5, 1, 0, 1].set(-jnp.inf))
    bad_w = w.at[8].set(jnp.inf).at[0].set(0.0)  # non-finite weight; zero weight
    keep = [i for i in range(C) if i not in (0, 2, 5, 8)]
    out, ow, _, diag = run(name, bad, bad_w)
    ref, ref_w, _, _ = run(name, take(tree, keep), w[np.asarray(keep)])
    for x in jax.tree.leaves(out):
      self.assertTrue(np.all(np.isfinite(np.asarray(x))))
    assert_tree_close(self, out, ref, atol=ATOL.get(name, 2e-5))
    np.testing.assert_allclose(ow, ref_w, rtol=1e-6)
    self.assertEqual(int(diag['num_excluded']), 4)
    if not name.endswith('noise'):   # nobody present: the zero update
      nan_tree = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), tree)
      out, ow, _, _ = run(name, nan_tree, jnp.ones((C,)))
      for x in jax.tree.leaves(out):
        np.testing.assert_array_equal(np.asarray(x, np.float32), 0.0)
      self.assertEqual(float(ow[0]), 0.0)


# --- NumPy references for randomized checks ----------------------------------


def np_trimmed(x, beta):
  n = x.shape[0]
  t = min(math.floor(beta * n), (n - 1) // 2)
  return np.sort(x, axis=0)[t:n - t].mean(0)


def np_krum_scores(x, f):
  n = len(x)
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  return np.array([np.sort(np.delete(d[i], i))[:max(n - f - 2, 1)].sum() for i in range(n)])


def np_bulyan(x, f):
  n = len(x)
  theta, d = n - 2 * f, ((x[:, None] - x[None]) ** 2).sum(-1)
  beta = theta - 2 * f
  remaining, chosen = list(range(n)), []
  for _ in range(theta):
    k = max(len(remaining) - f - 2, 1)
    keys = [(np.sort([d[i, j] for j in remaining if j != i])[:k].sum(),
             sum(d[i, j] for j in remaining if j != i), i) for i in remaining]
    chosen.append(remaining.pop(remaining.index(min(keys)[2])))
  sel = x[np.sort(chosen)]
  med = np.median(sel, axis=0)
  idx = np.argsort(np.abs(sel - med), axis=0, kind='stable')[:beta]
  return np.take_along_axis(sel, idx, axis=0).mean(0)


def flat(tree):
  """Stacked tree -> float64 ``[C, D]`` in leaf order (bfloat16 leaf: its rounded values)."""
  return np.concatenate([np.asarray(x, np.float64).reshape(x.shape[0], -1)
                         for x in jax.tree.leaves(tree)], axis=1)


def agg1(agg, x, w=None):
  """Runs a rule on a single-leaf stack ``x [C, D]``; returns the row ``[D]`` and diagnostics."""
  x = jnp.asarray(x, jnp.float32)
  w = jnp.ones((x.shape[0],)) if w is None else jnp.asarray(w, jnp.float32)
  out, _, _, diag = jax.jit(agg.update)({'x': x}, w, agg.init(None))
  return np.asarray(out['x'][0]), diag


class OrderStatisticsTest(parameterized.TestCase):

  def test_median_even_and_ties_by_hand(self):
    # columns: even C -> mean of the middle two; ties; symmetric pairs.
    x = np.array([[1., 2., 5., -3.], [2., 2., 1., -1.], [3., 2., 5., 4.], [10., 7., 1., 0.]])
    for method in ('network', 'bisect'):
      out, _ = agg1(A.median(method), x)
      np.testing.assert_array_equal(out, [2.5, 2., 3., -0.5])
      out, _ = agg1(A.median(method), x[:3])            # odd C
      np.testing.assert_array_equal(out, [2., 2., 5., -1.])
      out, _ = agg1(A.median(method), x, w=[1, 0, 1, 1])  # client 1 absent -> odd n
      np.testing.assert_array_equal(out, [3., 2., 5., 0.])

  def test_trimmed_mean_by_hand(self):
    x = np.array([[1., 2., 5.], [2., 2., 1.], [3., 2., 5.], [10., 7., 1.]])
    out, _ = agg1(A.trimmed_mean(0.25), x)                # t = 1 of 4
    np.testing.assert_allclose(out, [2.5, 2., 3.])
    y = np.array([[1.], [1.], [1.], [7.], [9.]])          # ties at the low end, t = 1
    out, _ = agg1(A.trimmed_mean(0.2), y)
    np.testing.assert_allclose(out, [3.])
    out, _ = agg1(A.trimmed_mean(0.0), y)                 # beta = 0: unweighted mean
    np.testing.assert_allclose(out, [19. / 5])
    out, _ = agg1(A.trimmed_mean(0.49), y)                # t = 2: the median
    np.testing.assert_allclose(out, [1.])

  @parameterized.parameters(1, 7)
  def test_median_methods_match_numpy(self, num):
    rng = np.random.default_rng(num)
    x = rng.normal(size=(num, 300)).astype(np.float32)
    x[:, :100] = np.round(x[:, :100])                     # many ties
    x[:, 100] = 0.0                                       # all equal
    w = np.ones(num)
    if num > 3:
      w[rng.choice(num, 2, replace=False)] = 0.0          # two absent clients
    keep = w > 0
    ref = np.median(x[keep], axis=0)
    for method in ('network', 'bisect'):
      out, _ = agg1(A.median(method), x, w)
      np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)

  def test_bisection_blocks_and_extreme_values(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4099)).astype(np.float32)     # several blocks + a remainder
    x[:, 0] = [-3e38, 3e38, 1e-45, -1e-45, 0.0]           # extremes and denormals
    x[:, 1] = [-0.0, 0.0, -0.0, 0.0, 1.0]
    m = jnp.asarray(x)
    got = _order_stats.map_columns(lambda b: _order_stats.kth_smallest(b, 1), m, chunk=512)
    np.testing.assert_array_equal(np.asarray(got), np.sort(x, axis=0)[1])

  def test_block_size_by_backend(self):
    # CPU: L2-sized blocks; accelerators: large blocks (few kernel launches).
    self.assertEqual(_order_stats.chunk_size(200, 'cpu'), 512)
    self.assertEqual(_order_stats.chunk_size(10, 'cpu'), 4096)
    self.assertEqual(_order_stats.chunk_size(200, 'gpu'), 1 << 18)
    self.assertEqual(_order_stats.chunk_size(200, 'tpu'), 1 << 18)
    # The same medians whatever the block (here: all columns in one block).
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3000)).astype(np.float32)
    with mock.patch.object(_order_stats.jax, 'default_backend', return_value='gpu'):
      big, _ = agg1(A.median('bisect'), x)
    small, _ = agg1(A.median('bisect'), x)
    np.testing.assert_array_equal(np.asarray(big), np.asarray(small))
    np.testing.assert_allclose(big, np.median(x, axis=0), rtol=1e-6, atol=1e-7)

  def test_trimmed_mean_matches_numpy(self):
    beta = 0.3
    rng = np.random.default_rng(30)
    x = np.round(rng.normal(size=(11, 200)) * 2).astype(np.float32)
    x[0] = 1e6                                            # a huge attacker value
    for method in ('auto', 'network', 'bisect'):
      out, _ = agg1(A.trimmed_mean(beta, method), x)
      np.testing.assert_allclose(out, np_trimmed(x, beta), rtol=1e-5, atol=1e-5)
      w = np.ones(11)
      w[3] = 0.0
      out, _ = agg1(A.trimmed_mean(beta, method), x, w)
      np.testing.assert_allclose(out, np_trimmed(x[w > 0], beta), rtol=1e-5, atol=1e-5)

  def test_trimmed_mean_network_equals_bisection(self):
    # Ties, absent clients (zero weight, NaN rows), odd and even counts, every t.
    rng = np.random.default_rng(31)
    for c in (1, 2, 5, 8, 13):
      for beta in (0.0, 0.1, 0.25, 0.45):
        x = np.round(rng.normal(size=(c, 300)) * 3).astype(np.float32)
        w = rng.integers(0, 3, size=c).astype(np.float32)
        if c > 2:
          x[1, 7] = np.nan
        rules = A.trimmed_mean(beta, 'network'), A.trimmed_mean(beta, 'bisect')
        net, _ = agg1(rules[0], x, w)
        bis, _ = agg1(rules[1], x, w)
        np.testing.assert_allclose(net, bis, rtol=1e-6, atol=1e-6, err_msg=f'C={c} beta={beta}')
        # Every client present: the network's branch with the kept ranks fixed at compile time.
        full = np.nan_to_num(x)
        net, _ = agg1(rules[0], full, np.ones(c))
        bis, _ = agg1(rules[1], full, np.ones(c))
        np.testing.assert_allclose(net, bis, rtol=1e-6, atol=1e-6,
                                   err_msg=f'C={c} beta={beta}, all present')
    with self.assertRaisesRegex(ValueError, "method must be one of .* got 'sort'"):
      A.trimmed_mean(0.1, 'sort')

  def test_selection_network_is_exact_for_every_rank(self):
    rng = np.random.default_rng(1)
    for num in (2, 5, 9):
      x = rng.normal(size=(num, 50)).astype(np.float32)
      got = jnp.stack(_order_stats.select_ranks(jnp.asarray(x), list(range(num))))
      np.testing.assert_array_equal(np.asarray(got), np.sort(x, axis=0))


class KrumTest(absltest.TestCase):

  def points(self):
    # 5 clients as 2-D points split over two leaves (x-coordinate, y-coordinate).
    p = np.array([0., 1., 2.5, 4., 10.], np.float32)
    return {'a': jnp.asarray(p), 'b': jnp.zeros((5, 1), jnp.float32)}

  def test_krum_scores_by_hand(self):
    # f = 1, n = 5: each score sums the n - f - 2 = 2 smallest squared distances.
    #   0: 1 + 6.25; 1: 1 + 2.25; 2.5: 2.25 + 2.25; 4: 2.25 + 9; 10: 36 + 56.25
    agg = A.krum(1)
    out, ow, _, diag = jax.jit(agg.update)(self.points(), jnp.arange(1., 6.), agg.init(None))
    np.testing.assert_allclose(diag['scores'], [7.25, 3.25, 4.5, 11.25, 92.25], rtol=1e-6)
    np.testing.assert_array_equal(diag['selected'], [False, True, False, False, False])
    self.assertEqual(float(out['a'][0]), 1.0)
    self.assertEqual(float(ow[0]), 2.0)

  def test_multi_krum_selection_by_hand(self):
    # m = 3 lowest scores: clients 1, 2, 0 -> (1*0 + 2*1 + 3*2.5) / (1 + 2 + 3)
    agg = A.multi_krum(1, m=3)
    out, ow, _, diag = jax.jit(agg.update)(self.points(), jnp.arange(1., 6.), agg.init(None))
    np.testing.assert_array_equal(diag['selected'], [True, True, True, False, False])
    np.testing.assert_allclose(out['a'][0], 9.5 / 6, rtol=1e-6)
    self.assertEqual(float(ow[0]), 6.0)
    # default m = C - f = 4 drops only the outlier at 10
    _, _, _, diag = jax.jit(A.multi_krum(1).update)(self.points(), jnp.ones(5), None)
    np.testing.assert_array_equal(diag['selected'], [True, True, True, True, False])

  def test_scores_match_numpy_and_stable_for_full_models(self):
    tree = make_tree(C, seed=10)
    _, _, _, diag = run('krum', tree, jnp.ones(C))
    np.testing.assert_allclose(diag['scores'], np_krum_scores(flat(tree), 1), rtol=1e-5)
    # Full models (large common offset): centring keeps the distances accurate.
    offset = make_tree(1, seed=11)
    full = jax.tree.map(lambda o, x: (1000.0 + o + 1e-2 * x.astype(jnp.float32)).astype(x.dtype),
                        offset, tree)
    _, _, _, diag = run('krum', full, jnp.ones(C))
    f64 = flat(full)
    np.testing.assert_allclose(diag['scores'], np_krum_scores(f64 - f64[0], 1), rtol=2e-3)

  def test_byzantine_outlier_never_selected(self):
    tree = make_tree(C, seed=12)
    tree = jax.tree.map(lambda x: x.at[3].set(50.0), tree)
    for name in ('krum', 'multi_krum', 'bulyan'):
      _, _, _, diag = run(name, tree, jnp.ones(C))
      self.assertFalse(bool(diag['selected'][3]), name)

  def test_bulyan_matches_numpy(self):
    tree = make_tree(C, seed=13)
    out, _, _, diag = run('bulyan', tree, jnp.ones(C))
    np.testing.assert_allclose(flat(out)[0], np_bulyan(flat(tree), 1), rtol=1e-2, atol=1e-5)
    np.testing.assert_allclose(flat(out)[0][3:], np_bulyan(flat(tree), 1)[3:], rtol=1e-5, atol=1e-6)
    self.assertEqual(int(np.sum(diag['selected'])), C - 2)


class GeometricMedianTest(absltest.TestCase):

  def test_collinear_points(self):
    x = np.array([[0.], [1.], [10.]])
    agg = A.geometric_median(nu=1e-8, tol=1e-9, max_iters=500)
    out, diag = agg1(agg, x)
    np.testing.assert_allclose(out, [1.0], atol=1e-3)     # the middle point, mean is 3.67
    self.assertGreater(int(diag['iterations']), 1)
    out, _ = agg1(agg, x, w=[1, 1, 3])                    # weight 3 > 1 + 1 wins
    np.testing.assert_allclose(out, [10.0], atol=1e-3)

  def test_fermat_point_of_triangle(self):
    # All angles < 120 degrees: the geometric median is the Fermat point, where
    # the unit vectors towards the three vertices sum to zero.
    x = np.array([[0., 0.], [4., 0.], [1., 3.]], np.float32)
    out, diag = agg1(A.geometric_median(nu=1e-8, tol=1e-10, max_iters=500), x)
    units = (x - out) / np.linalg.norm(x - out, axis=1, keepdims=True)
    self.assertLess(np.linalg.norm(units.sum(0)), 1e-3)
    self.assertGreater(np.linalg.norm(out - x.mean(0)), 0.1)
    np.testing.assert_allclose(np.sum(diag['weiszfeld_weights']), 1.0, rtol=1e-5)

  def test_max_iters_and_paper_tolerance(self):
    x = np.random.default_rng(0).normal(size=(6, 10))
    _, diag = agg1(A.geometric_median(max_iters=1, tol=1e-12), x)
    self.assertEqual(int(diag['iterations']), 1)
    _, diag = agg1(A.geometric_median(), x)               # tol = 0.1: a few steps
    self.assertLessEqual(int(diag['iterations']), 10)


class StagesTest(absltest.TestCase):

  def test_clipping_to_exact_norms(self):
    # norms 3 (across both leaves), 5 and 0.5
    tree = {'a': jnp.array([[0., 0.], [3., 4.], [0.3, 0.4]]), 'b': jnp.array([[3.], [0.], [0.]])}
    agg = A.clip_norm(2.0)
    out, ow, _, diag = jax.jit(agg.update)(tree, jnp.ones(3), agg.init(None))
    norms = np.sqrt(np.sum(np.asarray(out['a']) ** 2, 1) + np.sum(np.asarray(out['b']) ** 2, 1))
    np.testing.assert_allclose(norms, [2., 2., 0.5], rtol=1e-6)
    np.testing.assert_allclose(diag['update_norms'], [3., 5., 0.5], rtol=1e-6)
    np.testing.assert_array_equal(diag['clipped'], [True, True, False])
    np.testing.assert_allclose(out['a'][1], [1.2, 1.6], rtol=1e-6)   # direction kept
    np.testing.assert_allclose(out['a'][2], [0.3, 0.4], rtol=1e-7)   # untouched
    self.assertEqual(ow.shape, (3,))

  def test_noise_statistics_and_key_handling(self):
    agg = A.gaussian_noise(0.1, seed=11)
    state = agg.init(None)
    self.assertTrue(jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key))
    zeros = {'a': jnp.zeros((1, 20000)), 'b': jnp.zeros((1, 100, 100))}
    upd = jax.jit(agg.update)
    out1, _, state1, _ = upd(zeros, jnp.ones(1), state)
    out2, _, _, _ = upd(zeros, jnp.ones(1), state1)
    out1b, _, _, _ = upd(zeros, jnp.ones(1), agg.init(None))
    for leaf in jax.tree.leaves(out1):
      v = np.asarray(leaf).ravel()
      self.assertAlmostEqual(v.std(), 0.1, delta=0.003)   # 3 sigma of the sample std ~ 0.0016
      self.assertAlmostEqual(v.mean(), 0.0, delta=0.003)
    a1, a2 = np.asarray(out1['a']), np.asarray(out2['a'])
    self.assertLess(abs(np.corrcoef(a1.ravel(), a2.ravel())[0, 1]), 0.05)  # fresh noise
    np.testing.assert_array_equal(a1, np.asarray(out1b['a']))            # same seed, same noise
    b1 = np.asarray(out1['b']).ravel()
    self.assertLess(abs(np.corrcoef(a1.ravel()[:b1.size], b1)[0, 1]), 0.05)  # leaves differ
    silent = A.gaussian_noise(0.0)
    same, _, _, _ = silent.update(zeros, jnp.ones(1), silent.init(None))
    np.testing.assert_array_equal(np.asarray(same['a']), 0.0)

  def test_build_chains_stages(self):
    agg = A.build('trimmed_mean', norm_bound=1.0, dp_sigma=0.0, beta=0.1)
    self.assertLen(agg.init(None).inner, 2)
    agg = A.build('mean', dp_sigma=0.01, seed=4)
    self.assertLen(agg.init(None).inner, 2)
    self.assertLen(A.build('median').init(None).inner, 1)
    self.assertEqual(sorted(A.RULES), sorted(['mean', 'median', 'trimmed_mean', 'krum',
                                              'multi_krum', 'bulyan', 'geometric_median']))


class HeldOutInputsTest(parameterized.TestCase):
  """Inputs outside the usual range: exclusions, negative weights, integer leaves, huge updates."""

  def test_multi_krum_default_m_counts_present_clients(self):
    # 5 honest points, an attacker at 5 and a NaN client: f = 1, n = 6 present,
    # so the default m is n - f = 5 and the attacker is left out (C - f = 6 would take it).
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 5.0, np.nan], np.float32)[:, None]
    out, diag = agg1(A.multi_krum(1), x)
    np.testing.assert_array_equal(diag['selected'], [True] * 5 + [False, False])
    np.testing.assert_allclose(out, [0.2], rtol=1e-6)
    without, _ = agg1(A.multi_krum(1), x[:6])   # absent == not in the stack
    np.testing.assert_allclose(out, without, rtol=1e-6)

  def test_negative_weight_is_an_error_and_absent_under_jit(self):
    agg = A.weighted_mean()
    x = {'x': jnp.arange(4.0)[:, None]}
    w = jnp.array([1.0, -2.0, 1.0, 1.0])
    with self.assertRaisesRegex(ValueError, r'clients \[1\] have weights \[-2.0\]'):
      agg.update(x, w, agg.init(None))
    out, _, _, diag = jax.jit(agg.update)(x, w, agg.init(None))   # traced: documented as absent
    self.assertEqual(int(diag['num_excluded']), 1)
    np.testing.assert_allclose(out['x'][0], [(0.0 + 2.0 + 3.0) / 3], rtol=1e-6)

  @parameterized.parameters('mean', 'median_network', 'krum', 'bulyan')
  def test_integer_leaf_is_rejected(self, name):
    tree = {'f': jnp.zeros((C, 2)), 'steps': jnp.ones((C, 3), jnp.int32)}
    with self.assertRaisesRegex(ValueError, r"\['steps'\] has dtype int32"):
      run(name, tree, jnp.ones((C,)))

  @parameterized.parameters('krum', 'multi_krum', 'bulyan')
  def test_huge_finite_update_is_excluded_not_nan(self, name):
    # |u| = 1e30 is finite in float32 but its squared norm is not: the client
    # is treated as non-finite, so the rankings stay finite and it is never chosen.
    tree = make_tree(C, seed=14)
    huge = jax.tree.map(lambda x: x.at[4].set(1e30), tree)
    out, ow, _, diag = run(name, huge, jnp.ones((C,)))
    # The reference: the same stack with client 4 absent (weight 0; compiled once).
    ref, ref_w, _, ref_diag = run(name, tree, jnp.ones((C,)).at[4].set(0.0))
    self.assertFalse(bool(diag['selected'][4]))
    self.assertEqual(int(diag['num_excluded']), 1)
    scores = np.asarray(diag['scores'])
    self.assertFalse(np.isnan(scores).any())
    self.assertTrue(np.isfinite(np.delete(scores, 4)).all())
    assert_tree_close(self, out, ref, atol=2e-5)
    np.testing.assert_allclose(ow, ref_w, rtol=1e-6)
    np.testing.assert_array_equal(diag['selected'], ref_diag['selected'])


class BadHyperParametersTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('beta_half', lambda: A.trimmed_mean(0.5), '0.5'),
      ('beta_negative', lambda: A.trimmed_mean(-0.1), '-0.1'),
      ('beta_nan', lambda: A.trimmed_mean(float('nan')), 'nan'),
      ('f_negative', lambda: A.krum(-1), '-1'),
      ('f_float', lambda: A.multi_krum(1.5), '1.5'),
      ('m_zero', lambda: A.multi_krum(1, m=0), '0'),
      ('bulyan_f', lambda: A.bulyan('2'), "'2'"),
      ('nu', lambda: A.geometric_median(nu=0.0), '0.0'),
      ('tol', lambda: A.geometric_median(tol=-1.0), '-1.0'),
      ('iters', lambda: A.geometric_median(max_iters=0), '0'),
      ('clip', lambda: A.clip_norm(0.0), '0.0'),
      ('sigma', lambda: A.gaussian_noise(-0.1), '-0.1'),
      ('method', lambda: A.median('sort'), 'sort'),
      ('name', lambda: A.get_aggregator('krumm'), 'krumm'),
      ('unknown_hparam', lambda: A.get_aggregator('median', beta=0.1), 'beta'),
      ('missing_hparam', lambda: A.get_aggregator('krum'), 'num_byzantine'),
      ('norm_bound', lambda: A.build('mean', norm_bound=-2.0), '-2.0'),
      ('dp_sigma', lambda: A.build('mean', dp_sigma=-1.0), '-1.0'),
  )
  def test_factory_raises(self, make, value):
    with self.assertRaisesRegex(ValueError, value):
      make()

  @parameterized.named_parameters(
      ('krum', lambda: A.krum(2), 6, 'C=6'),              # needs C > 2f + 2 = 6
      ('multi_krum', lambda: A.multi_krum(1), 4, 'C=4'),
      ('multi_krum_m', lambda: A.multi_krum(1, m=9), 8, 'm=9'),
      ('bulyan', lambda: A.bulyan(2), 10, 'C=10'),        # needs C >= 4f + 3 = 11
  )
  def test_client_count_checked_at_trace_time(self, make, num, value):
    agg = make()
    x = {'x': jnp.zeros((num, 3))}
    with self.assertRaisesRegex(ValueError, value):
      jax.jit(agg.update)(x, jnp.ones((num,)), agg.init(None))

  def test_mismatched_weights(self):
    agg = A.median()
    with self.assertRaisesRegex(ValueError, r'\(4,\)'):
      agg.update({'x': jnp.zeros((4, 3))}, jnp.ones((5,)), agg.init(None))


if __name__ == '__main__':
  absltest.main()
