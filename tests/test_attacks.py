"""Attacks: projection, replacement identity, trigger, GMM, masks, jitted round."""
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

import fl_test_utils

from fl_jax import aggregators
from fl_jax import attacks
from fl_jax import client
from fl_jax import data as data_lib
from fl_jax import models
from fl_jax import simulation
from fl_jax import tree_math
from fl_jax.adversarial import standard_loss


def tree_close(test, a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def tiny_clients(num_clients=6, n=8, seed=0):
  return fl_test_utils.tiny_clients(num_clients, n, seed, min_size=4, zero_padding=False)


class ProjectionTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.center = {'a': jnp.array([1.0, -2.0, 0.5]), 'b': jnp.array([[3.0]])}
    # v - center = (3, 0, 0, 4): distance 5.
    self.point = {'a': jnp.array([4.0, -2.0, 0.5]), 'b': jnp.array([[7.0]])}

  def test_outside_point_lands_on_sphere_along_same_direction(self):
    out = jax.jit(attacks.project_l2_ball)(self.point, self.center, 2.0)
    diff = tree_math.tree_sub(out, self.center)
    self.assertAlmostEqual(float(tree_math.tree_l2_norm(diff)), 2.0, places=5)
    # Direction (3, 0, 0, 4) / 5 scaled to length 2.
    np.testing.assert_allclose(diff['a'], [1.2, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(diff['b'], [[1.6]], atol=1e-6)

  @parameterized.parameters(5.0, 5.5, 100.0, np.inf)
  def test_identity_inside_ball(self, radius):
    out = attacks.project_l2_ball(self.point, self.center, radius)
    tree_close(self, out, self.point, rtol=0, atol=0)

  def test_random_points_within_delta(self):
    rng = np.random.default_rng(0)
    for delta in (0.0, 0.1, 1.0, 3.0):
      v = {'a': jnp.asarray(rng.normal(size=3) * 4), 'b': jnp.asarray(rng.normal(size=(1, 1)))}
      out = attacks.project_l2_ball(v, self.center, delta)
      d = float(tree_math.tree_l2_norm(tree_math.tree_sub(out, self.center)))
      self.assertLessEqual(d, delta * (1 + 1e-6) + 1e-7)

  def test_zero_update_stays_zero(self):
    zero = jax.tree.map(jnp.zeros_like, self.center)
    out = attacks.clip_to_l2_ball(zero, 0.0)
    tree_close(self, out, zero, atol=0)
    self.assertTrue(bool(tree_math.tree_all_finite(out)))

  @parameterized.parameters((-1.0,), (np.nan,), ((1.0, 2.0),))
  def test_bad_radius(self, radius):
    with self.assertRaisesRegex(ValueError, 'radius'):
      attacks.project_l2_ball(self.point, self.center, np.asarray(radius))

  def test_decayed_radius(self):
    np.testing.assert_allclose(attacks.decayed_radius(1.5, 0.998, 10),
                               1.5 * 0.998 ** 10, rtol=1e-6)

  def test_local_trainer_respects_radius(self):
    model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    params = model.init(jax.random.key(0))
    data = tiny_clients(1, n=16)
    hp = client.LocalSGD(local_epochs=3, batch_size=4, lr=0.5)
    for every in (None, 2):
      train = jax.jit(attacks.make_local_trainer(standard_loss(model.apply), hp,
                                                 project_every=every))
      free, _ = train(params, data.x[0], data.y[0], data.mask[0], jax.random.key(1), 0,
                      np.inf)
      far = float(tree_math.tree_l2_norm(tree_math.tree_sub(free, params)))
      self.assertGreater(far, 0.05)
      for delta in (0.01, far / 2):
        out, m = train(params, data.x[0], data.y[0], data.mask[0], jax.random.key(1),
                       0, delta)
        d = float(tree_math.tree_l2_norm(tree_math.tree_sub(out, params)))
        self.assertLessEqual(d, delta * (1 + 1e-5))
      self.assertEqual(int(m.num_steps), 3 * 4)

  def test_projection_every_k_steps(self):
    # A projection that halves the distance to the global model is not
    # idempotent, so how often it runs shows in the result.
    model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    params = model.init(jax.random.key(0))
    data = tiny_clients(1, n=16)
    hp = client.LocalSGD(local_epochs=1, batch_size=4, lr=0.5)   # 4 steps
    halve = lambda p, g, r: tree_math.tree_add(g, tree_math.tree_scale(tree_math.tree_sub(p, g),
                                                                        0.5))
    loss = standard_loss(model.apply)
    batch = client.ClientBatch(data.x[0], data.y[0])
    run = lambda **kw: jax.jit(client.make_client_update(loss, hp, **kw))(
        params, batch, data.mask[0], jax.random.key(1), 0)[0]
    end_only, every1, every4, every9 = (run(project=halve, project_every=k)
                                        for k in (None, 1, 4, 9))
    plain = run()
    dist = lambda p: float(tree_math.tree_l2_norm(tree_math.tree_sub(p, params)))
    # Projecting after step 4 and again at the end halves twice.
    np.testing.assert_allclose(dist(every4), dist(end_only) / 2, rtol=1e-5)
    np.testing.assert_allclose(dist(end_only), dist(plain) / 2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(every9), jax.tree.leaves(end_only), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6)   # k beyond the last step: end only
    self.assertLess(dist(every1), dist(every4))
    with self.assertRaisesRegex(ValueError, 'project_every'):
      client.make_client_update(loss, hp, project=halve, project_every=0)
    with self.assertRaisesRegex(ValueError, 'needs a project'):
      client.make_client_update(loss, hp, project_every=2)
    with self.assertRaisesRegex(ValueError, 'radius=0.5'):
      client.make_client_update(loss, hp)(params, batch, data.mask[0], jax.random.key(1), 0,
                                          0.5)

  def test_local_trainer_equals_client_update_without_projection(self):
    model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    params = model.init(jax.random.key(0))
    data = tiny_clients(1, n=10)
    hp = client.LocalSGD(local_epochs=2, batch_size=4, lr=0.1, momentum=0.9,
                         weight_decay=1e-3)
    loss = standard_loss(model.apply)
    a, _ = jax.jit(client.make_client_update(loss, hp))(
        params, client.ClientBatch(data.x[0], data.y[0]), data.mask[0], jax.random.key(3), 2)
    b, _ = jax.jit(attacks.make_local_trainer(loss, hp))(
        params, data.x[0], data.y[0], data.mask[0], jax.random.key(3), 2, np.inf)
    tree_close(self, a, b, rtol=1e-5, atol=1e-6)


class ReplacementTest(absltest.TestCase):

  def test_fedavg_lands_on_attacker_model(self):
    # Three clients, weights n = (1, 2, 1), n_S = 4; client 0 attacks, so
    # gamma = n_S / n_0 = 4. Honest updates u1, u2 cancel under FedAvg:
    # 2 * u1 + 1 * u2 = 0. Then
    #   w_next = w + (1/4) * 4 * d + (2/4) u1 + (1/4) u2 = w + d.
    w = {'k': jnp.array([1.0, 2.0, 3.0])}
    d = jnp.array([0.5, 0.25, -1.0])
    u1 = jnp.array([1.0, -1.0, 0.0])
    u2 = jnp.array([-2.0, 2.0, 0.0])
    weights = jnp.array([1.0, 2.0, 1.0])
    malicious = jnp.array([True, False, False])

    def fake_trainer(global_params, x, y, mask, key, round_idx, radius):
      del x, y, mask, key, round_idx, radius
      new = jax.tree.map(lambda p: p + d, global_params)
      return new, client.ClientMetrics(jnp.float32(0), jnp.int32(1), jnp.int32(1))

    craft = attacks.replacement_craft(fake_trainer, delta0=10.0)
    participation = attacks.fixed_pool(3, 1, 0, is_malicious=np.array([True, False, False]))
    attack = attacks.make_attack(participation, craft)
    updates = {'k': jnp.stack([jnp.zeros(3), u1, u2])}
    data = attacks.attacker_data(jnp.zeros((2, 1)), jnp.zeros(2, jnp.int32))
    new_updates, new_weights, info = jax.jit(attack.apply)(
        w, updates, weights, jnp.array([0, 1, 2]), jax.random.key(0), 0, data)
    self.assertAlmostEqual(float(info['gamma']), 4.0, places=6)
    np.testing.assert_allclose(new_updates['k'][0], 4.0 * d, rtol=1e-6)
    np.testing.assert_allclose(new_updates['k'][1:], updates['k'][1:], atol=0)
    agg, _, _ = aggregators.aggregate(aggregators.weighted_mean(), new_updates,
                                      new_weights, aggregators.weighted_mean().init(w))
    np.testing.assert_allclose(w['k'] + agg['k'], w['k'] + d, rtol=1e-6)
    # Projection after boosting: the sent update is cut to the send radius.
    craft_cut = attacks.replacement_craft(fake_trainer, delta0=10.0, send_delta0=1.0)
    sent, info = craft_cut(w, updates, weights, malicious, jax.random.key(0), 0, data)
    self.assertAlmostEqual(float(tree_math.tree_l2_norm(sent)), 1.0, places=5)
    self.assertAlmostEqual(float(info['boosted_norm']),
                           4.0 * float(jnp.linalg.norm(d)), places=5)

  def test_factor_with_several_attackers(self):
    gamma = attacks.replacement_factor(jnp.array([3.0, 1.0, 2.0, 4.0]),
                                       jnp.array([True, False, True, False]))
    self.assertAlmostEqual(float(gamma), 10.0 / 5.0)
    self.assertEqual(float(attacks.replacement_factor(jnp.ones(2), jnp.zeros(2, bool))), 1.0)


class TriggerTest(parameterized.TestCase):

  @parameterized.product(bound=(0.1, 6 / 255), width=(1, 3),
                         sign=('positive', 'alternating'))
  def test_within_linf_bound_and_box(self, bound, width, sign):
    t = attacks.stripe_trigger((28, 28, 1), bound, stripe_width=width, sign=sign)
    self.assertAlmostEqual(float(np.abs(t).max()), bound, places=7)
    # Vertical stripes: constant down each column; column w is on iff (w // s) even.
    np.testing.assert_array_equal(t, np.broadcast_to(t[:1], t.shape))
    on = (np.arange(28) // width) % 2 == 0
    np.testing.assert_allclose(t[0, on, 0], bound)
    np.testing.assert_allclose(t[0, ~on, 0], -bound if sign == 'alternating' else 0.0)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(16, 28, 28, 1)), jnp.float32)
    x = x.at[:4].set(0.0).at[4:8].set(1.0)
    xt = attacks.apply_trigger(x, t)
    self.assertLessEqual(float(jnp.max(jnp.abs(xt - x))), bound + 1e-7)
    self.assertGreaterEqual(float(xt.min()), 0.0)
    self.assertLessEqual(float(xt.max()), 1.0)

  @parameterized.parameters(0.0, -0.1, np.nan)
  def test_bad_magnitude(self, magnitude):
    with self.assertRaisesRegex(ValueError, 'magnitude'):
      attacks.stripe_trigger((28, 28, 1), magnitude)

  def test_success_rate_by_hand(self):
    # A fake classifier: class 2 iff pixel (0, 0) > 0.5, else class 0.
    def apply_fn(params, x):
      del params
      hit = (x[:, 0, 0, 0] > 0.5).astype(jnp.float32)
      return jnp.stack([1 - hit, jnp.zeros_like(hit), hit], axis=-1)
    t = attacks.stripe_trigger((2, 2, 1), 0.1)      # +0.1 on column 0
    x = jnp.zeros((6, 2, 2, 1)).at[:, 0, 0, 0].set(
        jnp.array([0.45, 0.3, 0.45, 0.45, 0.2, 0.45]))
    y = jnp.array([0, 1, 2, 1, 0, 2])
    # Non-target (y != 2): examples 0, 1, 3, 4; flipped to 2: 0 and 3.
    rate = attacks.backdoor_success_rate(apply_fn, None, x, y, t, 2, chunk_size=4)
    self.assertAlmostEqual(float(rate), 2 / 4)
    with self.assertRaisesRegex(ValueError, 'target'):
      attacks.backdoor_success_rate(apply_fn, None, x[2:3], y[2:3], t, 2)

  def test_backdoor_loss_composition(self):
    # With a constant model, the poisoned rows use the target label, PGD rows
    # and clean rows the true labels.
    def apply_fn(params, x):
      return jnp.broadcast_to(params['b'], (x.shape[0], 3)) + 0.0 * jnp.sum(x)
    params = {'b': jnp.log(jnp.array([0.5, 0.3, 0.2]))}
    loss = attacks.backdoor_loss(apply_fn, np.full((2, 2, 1), 0.1, np.float32), 2,
                                 poison_fraction=0.25, adv_fraction=0.25,
                                 eps=0.1, steps=2, step_size=0.05)
    x = jnp.zeros((8, 2, 2, 1))
    y = jnp.zeros(8, jnp.int32)
    out = loss(params, x, y, jax.random.key(0))
    np.testing.assert_allclose(out[:2], -np.log(0.2), rtol=1e-5)
    np.testing.assert_allclose(out[2:], -np.log(0.5), rtol=1e-5)
    with self.assertRaisesRegex(ValueError, 'fraction'):
      attacks.backdoor_loss(apply_fn, np.zeros((2, 2, 1)), 0, poison_fraction=0.7,
                            adv_fraction=0.5)


class GMMTest(parameterized.TestCase):

  def _features(self):
    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 5, [4.0] * 5, [-4.0] * 5])
    y = np.repeat(np.arange(3), 60)
    f = means[y] + rng.normal(size=(180, 5))
    planted = np.array([65, 80, 101, 117])        # all of class 1
    f[planted] = means[1] + np.array([15.0, -12.0, 9.0, 0.0, 14.0])
    f[planted] += rng.normal(size=(4, 5)) * 0.1
    return f.astype(np.float32), y.astype(np.int32), planted

  @parameterized.parameters('diag', 'full')
  def test_picks_planted_outliers(self, cov):
    f, y, planted = self._features()
    x = f.reshape(-1, 5, 1, 1)        # "images" whose features are the pixels
    features_fn = lambda params, xb: xb.reshape(xb.shape[0], -1)
    edge = attacks.edge_case_set(features_fn, None, x, y, source_class=1, num=4,
                                 target_label=7, num_classes=3,
                                 covariance_type=cov)
    self.assertCountEqual(edge.index.tolist(), planted.tolist())
    np.testing.assert_array_equal(edge.y, 7)
    np.testing.assert_array_equal(edge.x, x[edge.index])
    self.assertTrue(np.all(np.diff(edge.log_density) >= 0))

  def test_log_density_by_hand(self):
    # 1-D, two classes with two samples each: means 0 and 10, variances 1 (+reg).
    f = np.array([[-1.0], [1.0], [9.0], [11.0]])
    y = np.array([0, 0, 1, 1])
    reg = 1e-3
    for cov in ('diag', 'full'):
      gmm = attacks.fit_class_gaussians(f, y, 2, covariance_type=cov, reg=reg)
      np.testing.assert_allclose(np.ravel(gmm.means), [0.0, 10.0])
      point = np.array([[2.0]])
      var = 1.0 + reg
      def normal(z, mu):
        return np.exp(-(z - mu) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var)
      expected = np.log(0.5 * normal(2.0, 0.0) + 0.5 * normal(2.0, 10.0))
      np.testing.assert_allclose(attacks.log_density(gmm, point), [expected], rtol=1e-10)

  def test_full_differs_from_diag_for_correlated_features(self):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 1))
    f = np.concatenate([z, z + 0.01 * rng.normal(size=(500, 1))], axis=1)
    y = np.zeros(500, np.int32)
    full = attacks.fit_class_gaussians(f, y, 1, covariance_type='full')
    diag = attacks.fit_class_gaussians(f, y, 1, covariance_type='diag')
    mu = full.means
    against = mu + np.array([[2.0, -2.0]])     # against the correlation
    along = mu + np.array([[2.0, 2.0]])
    self.assertLess(attacks.log_density(full, against)[0] + 100,
                    attacks.log_density(full, along)[0])
    # The diagonal model ignores the correlation: the two points are mirror
    # images, so their densities are equal.
    np.testing.assert_allclose(attacks.log_density(diag, against),
                               attacks.log_density(diag, along), rtol=1e-12)

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, 'labels'):
      attacks.fit_class_gaussians(np.zeros((3, 2)), np.array([0, 1, 5]), 3)
    with self.assertRaisesRegex(ValueError, 'covariance_type'):
      attacks.fit_class_gaussians(np.zeros((3, 2)), np.array([0, 1, 2]), 3,
                                  covariance_type='tied')
    with self.assertRaisesRegex(ValueError, 'num'):
      attacks.edge_case_set(lambda p, x: x.reshape(x.shape[0], -1), None,
                            np.zeros((4, 2, 1, 1)), np.array([0, 0, 1, 1]), 1, 3,
                            target_label=0, num_classes=2)


class EdgeDataTest(absltest.TestCase):

  def test_load_edge_set(self):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'ardis.npz')
      x = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
      np.savez(path, x=x.astype(np.uint8), y=np.array([7, 7]))
      edge = attacks.load_edge_set(path, target_label=1, expected_shape=(28, 28, 1))
      self.assertEqual(edge.x.shape, (2, 28, 28, 1))
      np.testing.assert_allclose(edge.x[..., 0], x / 255.0, rtol=1e-6)
      np.testing.assert_array_equal(edge.y, [1, 1])
      bad = os.path.join(d, 'bad.npz')
      np.savez(bad, x=np.zeros((2, 28, 28), np.float32))
      with self.assertRaisesRegex(ValueError, 'lacks'):
        attacks.load_edge_set(bad)
      np.savez(bad, x=np.full((2, 28, 28), 3.0, np.float32), y=np.array([1, 2]))
      with self.assertRaisesRegex(ValueError, r'\[0, 1\]'):
        attacks.load_edge_set(bad)
    with self.assertRaises(FileNotFoundError):
      attacks.load_edge_set('/nonexistent/edge.npz')

  def test_mix_ratio(self):
    ex, ey = np.ones((10, 2, 2, 1)), np.full(10, 1)
    cx, cy = np.zeros((20, 2, 2, 1)), np.full(20, 5)
    x, y, is_edge = attacks.mix_edge_and_clean(ex, ey, cx, cy, num_edge=6,
                                               num_clean=4, seed=0)
    self.assertEqual(x.shape, (10, 2, 2, 1))
    self.assertEqual(int(is_edge.sum()), 6)
    np.testing.assert_array_equal(y[is_edge], 1)
    np.testing.assert_array_equal(x[~is_edge], 0.0)
    with self.assertRaisesRegex(ValueError, 'num_edge'):
      attacks.mix_edge_and_clean(ex, ey, cx, cy, num_edge=11, num_clean=0, seed=0)


  def test_untargeted_labels(self):
    y = np.tile(np.arange(10), 20)
    out = attacks.untargeted_labels(y, 10, seed=0)
    self.assertTrue(np.all(out != y))
    self.assertTrue(np.all((out >= 0) & (out < 10)))
    self.assertGreater(len(set(out.tolist())), 5)
    with self.assertRaisesRegex(ValueError, 'y_true'):
      attacks.untargeted_labels(np.array([10]), 10, seed=0)


class ParticipationTest(parameterized.TestCase):

  def test_pool_and_masks(self):
    pool = attacks.malicious_pool(500, 175, seed=3)
    self.assertEqual(pool.shape, (500,))
    self.assertEqual(int(pool.sum()), 175)
    np.testing.assert_array_equal(pool, attacks.malicious_pool(500, 175, seed=3))
    ids = jnp.array([4, 17, 250, 499, 0])
    mal = attacks.sampled_malicious(pool, ids)
    np.testing.assert_array_equal(mal, pool[np.asarray(ids)])

  def test_activation_rule_by_hand(self):
    active = jax.jit(attacks.activation_rule(start_round=5, min_malicious=3))
    cases = [  # (malicious mask, round, expected)
        ([1, 1, 1, 0, 0], 5, True),
        ([1, 1, 1, 0, 0], 4, False),      # too early
        ([1, 1, 0, 0, 0], 9, False),      # only 2 malicious
        ([1, 1, 1, 1, 1], 100, True),
        ([0, 1, 0, 1, 1], 6, True),
        ([0, 0, 0, 0, 0], 6, False),
    ]
    for mask, r, expected in cases:
      self.assertEqual(bool(active(jnp.asarray(mask, bool), r)), expected, (mask, r))

  def test_fixed_frequency_forces_attacker_only_every_f_rounds(self):
    p = attacks.fixed_frequency(30, 5, 10, attacker_ids=(7, 21), offset=3,
                                start_round=10)
    sample = jax.jit(p.sample)
    for r in range(45):
      ids = np.asarray(sample(jax.random.fold_in(jax.random.key(0), r), r))
      self.assertLen(set(ids.tolist()), 5)
      self.assertTrue(np.all((ids >= 0) & (ids < 30)))
      mal = p.is_malicious[ids]
      attack_round = r >= 10 and r % 10 == 3
      self.assertEqual(int(mal.sum()), 1 if attack_round else 0, r)
      if attack_round:
        expected = (7, 21)[(r // 10) % 2]
        self.assertIn(expected, ids.tolist())
      self.assertEqual(bool(p.active(jnp.asarray(mal), r)), attack_round)
    np.testing.assert_array_equal(attacks.attack_rounds(10, 45, offset=3, start_round=10),
                                  [13, 23, 33, 43])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'num_malicious'):
      attacks.malicious_pool(5, 6, 0)
    with self.assertRaisesRegex(ValueError, 'attacker_ids'):
      attacks.fixed_frequency(10, 3, 10, attacker_ids=(10,))
    with self.assertRaisesRegex(ValueError, 'clients_per_round'):
      attacks.fixed_frequency(10, 10, 10, attacker_ids=(0,))
    with self.assertRaisesRegex(ValueError, 'min_malicious'):
      attacks.fixed_pool(10, 2, 0, min_malicious=3)


shift_update = fl_test_utils.shift_update


class RoundWithAttackTest(absltest.TestCase):
  """Six clients, clients 1 and 3 malicious, the attack active from round 3."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    cls.params = cls.model.init(jax.random.key(0))
    hp = client.LocalSGD(local_epochs=1, batch_size=4, lr=0.1)
    cls.update_fn = [client.make_client_update(standard_loss(cls.model.apply), hp)]
    cls.data = tiny_clients()
    cls.is_malicious = np.array([False, True, False, True, False, False])
    cls.crafted = jax.tree.map(lambda p: jnp.full_like(p, 0.01), cls.params)
    cls.traces = [0]

    def craft(global_params, updates, weights, malicious, key, round_idx, data):
      del global_params, updates, weights, malicious, key, round_idx
      cls.traces[0] += 1
      return jax.tree.map(lambda u: u * data, cls.crafted), {'scale': data}

    # Functions live in a dict so that they do not become bound methods.
    participation = attacks.fixed_pool(6, 2, 0, is_malicious=cls.is_malicious,
                                       start_round=3)
    attack = attacks.make_attack(participation, craft)
    cls.fns = {'craft': craft, 'attack': attack,
               'honest': cls._round_fn(cls.fns_update(), None),
               'attacked': cls._round_fn(cls.fns_update(), attack)}

  @classmethod
  def fns_update(cls):
    return cls.update_fn[0]

  @classmethod
  def _round_fn(cls, update, attack, clients_per_round=6):
    return simulation.make_round_fn(update, aggregators.weighted_mean(), num_clients=6,
                                    clients_per_round=clients_per_round, seed=1,
                                    attack=attack, client_parallel='vmap')

  def _state(self, start_round):
    return simulation.init_server_state(jax.tree.map(jnp.copy, self.params),
                                        aggregators.weighted_mean(),
                                        start_round=start_round)

  def test_replaces_exactly_the_malicious_rows(self):
    _, honest = self.fns['honest'](self._state(3), self.data)
    _, rm = self.fns['attacked'](self._state(3), self.data, jnp.float32(1.0))
    ids = np.asarray(rm.client_ids)
    mal = self.is_malicious[ids]
    np.testing.assert_array_equal(rm.attack['malicious'], mal)
    np.testing.assert_array_equal(rm.attack['replaced'], mal)
    self.assertTrue(bool(rm.attack['active']))
    # Same sample; honest rows untouched, malicious rows carry the crafted update.
    np.testing.assert_array_equal(np.asarray(honest.client_ids), ids)
    crafted_norm = float(tree_math.tree_l2_norm(self.crafted))
    np.testing.assert_allclose(np.asarray(rm.update_norms)[~mal],
                               np.asarray(honest.update_norms)[~mal], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rm.update_norms)[mal], crafted_norm, rtol=1e-6)
    np.testing.assert_allclose(rm.attack['distances'], rm.update_norms, rtol=1e-6)
    self.assertAlmostEqual(float(rm.attack['crafted_norm']), crafted_norm, places=5)

  def test_inactive_rounds_are_honest_and_no_retrace(self):
    state = self._state(0)
    _, honest = self.fns['honest'](self._state(0), self.data)
    state, rm = self.fns['attacked'](state, self.data, jnp.float32(2.0))
    self.assertFalse(bool(rm.attack['active']))
    np.testing.assert_array_equal(rm.attack['replaced'], False)
    np.testing.assert_allclose(rm.update_norms, honest.update_norms, rtol=1e-6)
    self.assertEqual(float(rm.attack['scale']), 0.0)   # the skip branch ran
    traces = self.traces[0]
    for r in range(1, 5):
      state, rm = self.fns['attacked'](state, self.data, jnp.float32(2.0))
      self.assertEqual(bool(rm.attack['active']), r >= 3)
    self.assertEqual(float(rm.attack['scale']), 2.0)
    self.assertEqual(self.traces[0], traces)            # no retrace
    self.assertEqual(self.fns['attacked']._cache_size(), 1)

  def test_fedavg_of_mixed_stack_by_hand(self):
    # With the shift update, honest client i sends u_i = mean(x_i) on every
    # entry; malicious clients send 0.01. FedAvg by hand.
    fn = self._round_fn(shift_update, self.fns['attack'])
    new_state, rm = fn(self._state(3), self.data, jnp.float32(1.0))
    x = np.asarray(self.data.x).reshape(6, 8, -1).mean(-1)
    mask = np.asarray(self.data.mask)
    n = mask.sum(1).astype(np.float64)
    shifts = np.where(self.is_malicious, 0.01, (x * mask).sum(1) / n)
    expected = np.sum(n * shifts) / n.sum()
    for new, old in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(self.params)):
      np.testing.assert_allclose(new - old, expected, rtol=1e-5)
    self.assertCountEqual(np.asarray(rm.client_ids).tolist(), range(6))

  def test_fixed_frequency_round(self):
    participation = attacks.fixed_frequency(6, 3, 2, attacker_ids=(5,))
    fn = self._round_fn(shift_update, attacks.make_attack(participation, self.fns['craft']),
                        clients_per_round=3)
    state = self._state(0)
    for r in range(4):
      state, rm = fn(state, self.data, jnp.float32(1.0))
      ids = np.asarray(rm.client_ids)
      self.assertEqual(5 in ids.tolist(), r % 2 == 0)
      self.assertEqual(bool(rm.attack['active']), r % 2 == 0)
      np.testing.assert_array_equal(rm.attack['replaced'], ids == 5)

  def test_reported_weight(self):
    participation = attacks.fixed_pool(6, 2, 0, is_malicious=self.is_malicious)
    attack = attacks.make_attack(participation, self.fns['craft'], reported_weight=50.0)
    updates = jax.tree.map(lambda p: jnp.zeros((3,) + p.shape), self.params)
    _, w, info = attack.apply(self.params, updates, jnp.array([3.0, 4.0, 5.0]),
                              jnp.array([0, 1, 3]), jax.random.key(0), 0,
                              jnp.float32(1.0))
    np.testing.assert_array_equal(w, [3.0, 50.0, 50.0])
    np.testing.assert_array_equal(info['replaced'], [False, True, True])

  def test_bad_arguments(self):
    participation = attacks.fixed_pool(6, 2, 0, is_malicious=self.is_malicious)
    with self.assertRaisesRegex(ValueError, 'reported_weight'):
      attacks.make_attack(participation, self.fns['craft'], reported_weight=-1.0)
    with self.assertRaisesRegex(ValueError, 'participation'):
      attacks.make_attack(self.is_malicious, self.fns['craft'])


class EdgeAttackCraftTest(absltest.TestCase):

  def test_pgd_and_blackbox_crafts(self):
    model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    params = model.init(jax.random.key(0))
    data = tiny_clients(1, n=16)
    adata = attacks.attacker_data(data.x[0], data.y[0], data.mask[0])
    hp = client.LocalSGD(local_epochs=2, batch_size=4, lr=0.5)
    loss = standard_loss(model.apply)
    trainer = attacks.make_local_trainer(loss, hp, project_every=2)
    craft = attacks.pgd_craft(trainer, delta0=0.05, decay=0.5)
    args = (params, None, jnp.ones(3), jnp.array([True, False, False]),
            jax.random.key(0))
    for r in (0, 2):
      u, info = jax.jit(craft)(*args, r, adata)
      self.assertAlmostEqual(float(info['radius']), 0.05 * 0.5 ** r, places=6)
      self.assertLessEqual(float(tree_math.tree_l2_norm(u)), 0.05 * 0.5 ** r * (1 + 1e-5))
    bb = attacks.blackbox_craft(client.make_client_update(loss, hp))
    u, info = jax.jit(bb)(*args, 0, adata)
    new, _ = jax.jit(client.make_client_update(loss, hp))(
        params, client.ClientBatch(adata.x, adata.y), adata.mask, jax.random.key(0), 0)
    tree_close(self, u, tree_math.tree_sub(new, params), atol=1e-6)
    with self.assertRaisesRegex(ValueError, 'decay'):
      attacks.pgd_craft(trainer, delta0=1.0, decay=1.5)


class StealthyCraftTest(absltest.TestCase):

  def test_crafts_match_their_trainers(self):
    model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    params = model.init(jax.random.key(0))
    data = tiny_clients(1, n=16)
    adata = attacks.attacker_data(data.x[0], data.y[0], data.mask[0])
    hp = client.LocalSGD(local_epochs=1, batch_size=8, lr=0.1)
    trigger = attacks.stripe_trigger((4, 4, 1), 0.1)
    key = jax.random.key(3)
    args = (params, None, jnp.ones(2), jnp.array([True, False]), key, 0, adata)
    # (PGD rows are covered by test_backdoor_loss_composition; none here.)
    craft = attacks.backdoor_craft(model.apply, trigger, 2, hp, poison_fraction=0.25,
                                   adv_fraction=0.0, warmup_epochs=1)
    u, info = jax.jit(craft)(*args)
    self.assertEqual(jax.tree.structure(u), jax.tree.structure(params))
    self.assertTrue(bool(tree_math.tree_all_finite(u)))
    self.assertGreater(float(tree_math.tree_l2_norm(u)), 0.0)
    self.assertTrue(np.isfinite(float(info['attacker_loss'])))
    craft = attacks.distillation_craft(model.apply, temperature=10.0, teacher_hp=hp,
                                       student_hp=hp)
    u, info = jax.jit(craft)(*args)
    out = attacks.craft_distilled_model(model.apply, params, adata,
                                        jax.random.split(key)[1], temperature=10.0,
                                        teacher_hp=hp, student_hp=hp)
    tree_close(self, tree_math.tree_add(params, u), out.student, rtol=1e-4, atol=1e-6)
    self.assertEqual(set(info), {'teacher_loss', 'student_loss'})
    with self.assertRaisesRegex(ValueError, 'warmup_epochs'):
      attacks.craft_backdoored_model(model.apply, params, adata, key, trigger=trigger,
                                     target=2, hp=hp, warmup_epochs=-1)


class DistillationTest(absltest.TestCase):

  def test_report_sees_masked_gradients(self):
    # A saturated linear 2-class model on 8x8 images: logit gap
    # 2 * 1e5 * (mean(x) - 0.5). The images are constant 0.3 or 0.7, so even a
    # random start keeps |gap| > 1e4 (the mean of 64 uniform noises hardly
    # moves): at T = 1 the float32 softmax gradient is exactly zero and PGD
    # cannot move. Crafted at T = 1e5 the gradient is back, and eps = 0.25
    # moves the mean across 0.5, so every example flips.
    def apply_fn(params, x):
      s = params * (jnp.mean(x, axis=(1, 2, 3)) - 0.5)
      return jnp.stack([-s, s], axis=-1)
    x = jnp.concatenate([jnp.full((10, 8, 8, 1), 0.3), jnp.full((10, 8, 8, 1), 0.7)])
    y = jnp.array([0] * 10 + [1] * 10)
    report = attacks.distillation_report(apply_fn, jnp.float32(1e5), x, y,
                                         jax.random.key(0), eps=0.25,
                                         temperature=1e5, steps=10)
    self.assertEqual(report['clean'], 1.0)
    self.assertEqual(report['pgd_defender'], 1.0)
    self.assertEqual(report['pgd_attacker'], 0.0)

  def test_student_matches_teacher_soft_labels(self):
    model = models.get_model('mlp', (4, 4, 1), 3, hidden=(8,))
    params = model.init(jax.random.key(0))
    data = tiny_clients(1, n=32)
    hp = client.LocalSGD(local_epochs=20, batch_size=8, lr=0.5, momentum=0.9)
    out = attacks.train_distilled(model.apply, data.x[0], data.y[0], jax.random.key(1),
                                  temperature=5.0, teacher_hp=hp, student_hp=hp,
                                  teacher_init=params, student_init=params,
                                  mask=data.mask[0])
    m = np.asarray(data.mask[0])
    x = data.x[0][m]
    # The teacher fits its training labels better than the start, and the
    # student is closer to the teacher's soft labels at T than its start was.
    acc0 = float(jnp.mean(jnp.argmax(model.apply(params, x), -1) == data.y[0][m]))
    acc_t = float(jnp.mean(jnp.argmax(model.apply(out.teacher, x), -1) == data.y[0][m]))
    self.assertGreater(acc_t, acc0)
    q = jax.nn.softmax(model.apply(out.teacher, x) / 5.0)
    def xent(p):
      return float(jnp.mean(-jnp.sum(q * jax.nn.log_softmax(model.apply(p, x) / 5.0), -1)))
    self.assertLess(xent(out.student), xent(params) - 0.01)
    agree = jnp.mean(jnp.argmax(model.apply(out.teacher, x), -1)
                     == jnp.argmax(model.apply(out.student, x), -1))
    self.assertGreaterEqual(float(agree), 0.75)
    self.assertTrue(np.isfinite(float(out.student_loss)))


if __name__ == '__main__':
  absltest.main()
