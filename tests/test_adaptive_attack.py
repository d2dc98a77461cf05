"""Tests for fl_jax.attacks.adaptive (certified-FAT Section 4)."""
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import attacks
from fl_jax import certification
from fl_jax import client
from fl_jax import models
from fl_jax import tree_math
from fl_test_utils import tiny_clients

EPS = 0.05


def _setup():
  model = models.get_model('mlp', (4, 4, 1), 3, hidden=(16,))
  params = model.init(jax.random.key(0))
  data = tiny_clients(1, n=32, min_size=32)
  adata = attacks.attacker_data(data.x[0], data.y[0], data.mask[0])
  cert_x, cert_y = data.x[0][:8], data.y[0][:8]
  return model, params, adata, cert_x, cert_y


class ObjectiveTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.params, cls.adata, cls.cx, cls.cy = _setup()

  def test_values_against_certify(self):
    r = certification.certify(self.model.apply, self.params, self.cx, self.cy, EPS)
    mean = float(np.mean(r.loss))
    self.assertGreater(mean, 0.0)
    cert = attacks.certification_objective(self.model.apply, self.cx, self.cy, EPS)
    self.assertAlmostEqual(float(cert(self.params)), mean, places=5)
    self.assertAlmostEqual(float(cert.statistic(self.params)), mean, places=5)
    match = attacks.certification_objective(self.model.apply, self.cx, self.cy, EPS,
                                            mode='match')
    t = 0.5 * mean
    self.assertAlmostEqual(float(match(self.params, t)), ((mean - t) / t) ** 2,
                           places=4)
    self.assertAlmostEqual(float(match(self.params, mean)), 0.0, places=8)

  def test_penalty_is_added_to_every_example(self):
    cert = attacks.certification_objective(self.model.apply, self.cx, self.cy, EPS)
    base = lambda p, x, y, key=None: jnp.sum(x.reshape(x.shape[0], -1), 1) * 0 + y
    loss = attacks.with_certification(base, cert, 2.5)
    x, y = self.adata.x[:5], self.adata.y[:5].astype(jnp.float32)
    got = loss(self.params, x, y)
    np.testing.assert_allclose(got, y + 2.5 * float(cert(self.params)), rtol=1e-5)

  def test_gradient_is_finite_and_moves_the_statistic(self):
    cert = attacks.certification_objective(self.model.apply, self.cx, self.cy, EPS)
    g = jax.grad(cert)(self.params)
    self.assertTrue(bool(tree_math.tree_all_finite(g)))
    norm = float(tree_math.tree_l2_norm(g))
    self.assertGreater(norm, 0.0)
    # A small step against the gradient lowers the objective (first order).
    step = 1e-3 / norm
    lower = jax.tree.map(lambda p, d: p - step * d, self.params, g)
    self.assertLess(float(cert(lower)), float(cert(self.params)))

  def test_bad_arguments(self):
    apply_fn = self.model.apply
    with self.assertRaisesRegex(ValueError, 'mode'):
      attacks.certification_objective(apply_fn, self.cx, self.cy, EPS, mode='exact')
    with self.assertRaisesRegex(ValueError, 'share n'):
      attacks.certification_objective(apply_fn, self.cx, self.cy[:3], EPS)
    with self.assertRaisesRegex(ValueError, 'eps'):
      attacks.certification_objective(apply_fn, self.cx, self.cy, -0.1)
    match = attacks.certification_objective(apply_fn, self.cx, self.cy, EPS,
                                            mode='match')
    with self.assertRaisesRegex(ValueError, 'target'):
      match(self.params)
    with self.assertRaisesRegex(ValueError, "target.*-1.0"):
      match(self.params, -1.0)
    with self.assertRaisesRegex(ValueError, 'weight.*nan'):
      attacks.with_certification(lambda *a: 0.0, match, float('nan'))
    hp = client.LocalSGD()
    kw = dict(temperature=10.0, teacher_hp=hp, student_hp=hp, refine_hp=hp,
              weight=1.0)
    with self.assertRaisesRegex(ValueError, 'exactly one'):
      attacks.adaptive_distillation_craft(apply_fn, match, **kw)
    with self.assertRaisesRegex(ValueError, 'exactly one'):
      attacks.adaptive_distillation_craft(apply_fn, match, match_global=True,
                                          target=0.5, **kw)
    cert = attacks.certification_objective(apply_fn, self.cx, self.cy, EPS)
    with self.assertRaisesRegex(ValueError, 'takes no target'):
      attacks.adaptive_distillation_craft(apply_fn, cert, match_global=True, **kw)


class RefinementTest(absltest.TestCase):
  """Step 2 of the attack on a tiny model: the penalty does what it says."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.params, cls.adata, cls.cx, cls.cy = _setup()
    cls.hp = client.LocalSGD(local_epochs=3, batch_size=8, lr=0.05, momentum=0.9)
    cls.refine_hp = client.LocalSGD(local_epochs=10, batch_size=8, lr=0.02,
                                    momentum=0.9)

  def _craft(self, objective, weight, target=None):
    return attacks.craft_adaptive_distilled_model(
        self.model.apply, self.params, self.adata, jax.random.key(1),
        objective=objective, temperature=10.0, teacher_hp=self.hp,
        student_hp=self.hp, refine_hp=self.refine_hp, weight=weight,
        target=target)

  def test_certify_mode_lowers_the_certifiable_loss(self):
    cert = attacks.certification_objective(self.model.apply, self.cx, self.cy, EPS)
    plain = self._craft(cert, 0.0)       # refinement on the soft labels only
    adaptive = self._craft(cert, 5.0)
    before = float(plain.objective_before)
    self.assertAlmostEqual(float(adaptive.objective_before), before, places=5)
    self.assertLess(float(adaptive.objective_after), 0.5 * before)
    self.assertLess(float(adaptive.objective_after),
                    0.5 * float(plain.objective_after))
    self.assertAlmostEqual(float(cert(adaptive.params)),
                           float(adaptive.objective_after), places=5)
    acc = certification.certified_accuracy(self.model.apply, adaptive.params,
                                           self.cx, self.cy, EPS)
    acc_plain = certification.certified_accuracy(self.model.apply, plain.params,
                                                 self.cx, self.cy, EPS)
    self.assertGreaterEqual(float(acc), float(acc_plain))

  def test_match_mode_moves_towards_the_target(self):
    match = attacks.certification_objective(self.model.apply, self.cx, self.cy,
                                             EPS, mode='match')
    plain = self._craft(match, 0.0, target=1.0)
    start = float(match.statistic(plain.distilled))
    target = 0.3 * start
    out = self._craft(match, 0.5, target=target)   # relative: gradients ~1/t^2
    end = float(match.statistic(out.params))
    self.assertLess(abs(end - target), 0.5 * abs(start - target))

  def test_craft_returns_the_refined_update(self):
    cert = attacks.certification_objective(self.model.apply, self.cx, self.cy, EPS)
    craft = attacks.adaptive_distillation_craft(
        self.model.apply, cert, temperature=10.0, teacher_hp=self.hp,
        student_hp=self.hp, refine_hp=self.refine_hp, weight=5.0)
    key = jax.random.key(1)
    u, info = jax.jit(craft)(self.params, None, jnp.ones(2),
                             jnp.array([True, False]), key, 0, self.adata)
    direct = self._craft(cert, 5.0)
    tree_close = lambda a, b: jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
    tree_close(tree_math.tree_add(self.params, u), direct.params)
    self.assertEqual(set(info), {'objective_before', 'objective_after'})

  def test_match_craft_targets_the_global_statistic(self):
    match = attacks.certification_objective(self.model.apply, self.cx, self.cy,
                                             EPS, mode='match')
    craft = attacks.adaptive_distillation_craft(
        self.model.apply, match, temperature=10.0, teacher_hp=self.hp,
        student_hp=self.hp, refine_hp=self.refine_hp, weight=0.5,
        match_global=True)
    key = jax.random.key(1)
    _, info = jax.jit(craft)(self.params, None, jnp.ones(2),
                             jnp.array([True, False]), key, 0, self.adata)
    target = float(match.statistic(self.params))
    direct = self._craft(match, 0.5, target=target)
    self.assertAlmostEqual(float(info['objective_after']),
                           float(direct.objective_after), places=3)
    self.assertLess(float(info['objective_after']), float(info['objective_before']))


class SimulationTest(absltest.TestCase):
  """``attack='adaptive'`` in a defended federated run (launch config path)."""

  def _cfg(self, **kw):
    from launch.configs import mnist_fedavg  # pylint: disable=g-import-not-at-top
    cfg = mnist_fedavg.get_config('smoke').to_dict()
    cfg.update(attack='adaptive', num_malicious=16, attack_min_malicious=1, rounds=2,
               eval_every=2, checkpoint_every=2, defender=True, defender_cert_points=8,
               defender_val_points=20, defender_checks='clean,cert_loss',
               defender_cert_eps=(0.05,), distill_epochs=1, distill_temperature=10.0,
               client_pool_size=400)
    cfg.update(kw)
    return cfg

  def test_defended_rounds_with_the_adaptive_attacker(self):
    import json  # pylint: disable=g-import-not-at-top
    import os  # pylint: disable=g-import-not-at-top
    import tempfile  # pylint: disable=g-import-not-at-top
    from fl_jax.simulation import train as train_lib  # pylint: disable=g-import-not-at-top
    workdir = tempfile.mkdtemp()
    train_lib.train(self._cfg(), workdir, log=lambda *_: None)
    recs = [json.loads(l) for l in open(os.path.join(workdir, 'rounds.jsonl'))]
    self.assertLen(recs, 2)
    for r in recs:
      self.assertTrue(r['attack/active'])
      self.assertGreaterEqual(r['attack/num_malicious'], 1)
      self.assertTrue(np.isfinite(r['attack/crafted_norm']))
      self.assertGreater(r['attack/crafted_norm'], 0.0)
      self.assertIn(r['defender/accept'], (True, False))
      self.assertTrue(np.isfinite(r['defender/certifiable_loss@0.05']))

  def test_bad_config(self):
    from fl_jax.simulation import train as train_lib  # pylint: disable=g-import-not-at-top
    with self.assertRaisesRegex(ValueError, r'adaptive_points \(500\)'):
      train_lib.build_experiment(self._cfg(adaptive_points=500))
    with self.assertRaisesRegex(ValueError, 'mode'):
      train_lib.build_experiment(self._cfg(adaptive_mode='exact'))


if __name__ == '__main__':
  absltest.main()
