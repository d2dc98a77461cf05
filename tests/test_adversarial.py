"""Tests for fl_jax.adversarial: PGD / FGSM with temperature, losses."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import adversarial


def linear_apply(params, x):
  return x.reshape(x.shape[0], -1) @ params['w'] + params['b']


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_logits(params, x):
  x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
  return x @ np.asarray(params['w'], np.float64) + np.asarray(params['b'])


def np_ce(params, x, y):
  """Per-example cross-entropy of the linear model, in float64 NumPy."""
  y = np.asarray(y)
  return -np_log_softmax(np_logits(params, x))[np.arange(len(y)), y]


def random_linear(seed, dim, classes, scale=1.0):
  rng = np.random.default_rng(seed)
  w = scale * rng.normal(size=(dim, classes))
  return {'w': jnp.asarray(w, jnp.float32),
          'b': jnp.asarray(scale * rng.normal(size=(classes,)), jnp.float32)}


def worst_corner(x, d, eps):
  """argmin_{|x'-x|<=eps, 0<=x'<=1} d . x'  (per coordinate), for d != 0."""
  return np.clip(x - eps * np.sign(d), 0.0, 1.0)


class PGDTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 3, 3, 1)).astype(np.float32)
    # Entries on and near the box edges.
    x[0] = 0.0
    x[1] = 1.0
    x[2, 0] = 0.01
    x[3, 1] = 0.995
    self.x = jnp.asarray(x)
    self.params = random_linear(1, 9, 4, scale=3.0)
    self.y = jnp.asarray([0, 1, 2, 3, 0, 1], jnp.int32)
    self.key = jax.random.key(0)

  @parameterized.parameters(
      dict(random_start=True, targeted=False, keep_best=False),
      dict(random_start=True, targeted=True, keep_best=False),
      dict(random_start=True, targeted=False, keep_best=True),
  )
  def test_stays_in_ball_and_box(self, random_start, targeted, keep_best):
    for eps, temperature in ((0.1, 1.0), (0.3, 10.0)):
      x_adv = adversarial.pgd(linear_apply, self.params, self.x, self.y,
                              self.key, eps=eps, steps=4, step_size=0.07,
                              random_start=random_start, targeted=targeted,
                              keep_best=keep_best, temperature=temperature)
      self.assertEqual(x_adv.shape, self.x.shape)
      self.assertEqual(x_adv.dtype, self.x.dtype)
      delta = np.asarray(x_adv) - np.asarray(self.x)
      self.assertLessEqual(np.abs(delta).max(), eps + 1e-6)
      self.assertGreaterEqual(float(x_adv.min()), 0.0)
      self.assertLessEqual(float(x_adv.max()), 1.0)
      # The attack moved something (the linear model is far from saturated).
      self.assertGreater(np.abs(delta).max(), 1e-3)

  def test_custom_box(self):
    x = jnp.full(self.x.shape, 0.45, jnp.float32)
    x_adv = adversarial.pgd(linear_apply, self.params, x, self.y, self.key,
                            eps=0.2, steps=4, step_size=0.07, lo=0.4, hi=0.5)
    self.assertGreaterEqual(float(x_adv.min()), 0.4 - 1e-7)
    self.assertLessEqual(float(x_adv.max()), 0.5 + 1e-7)
    self.assertAlmostEqual(float(jnp.abs(x_adv - x).max()), 0.05, places=6)

  @parameterized.parameters(True, False)
  def test_binary_linear_worst_case(self, random_start):
    # For 2 classes the cross-entropy is decreasing in the margin
    # (w_y - w_o).x + b_y - b_o, so the worst case over the ball-box
    # intersection is the corner x - eps * sign(w_y - w_o), clipped.
    rng = np.random.default_rng(5)
    dim, eps = 12, 0.15
    w = rng.normal(size=(dim, 2)).astype(np.float32)
    params = {'w': jnp.asarray(w), 'b': jnp.asarray([0.3, -0.2], jnp.float32)}
    x = rng.uniform(size=(8, dim)).astype(np.float32)
    x[0, :3] = [0.0, 1.0, 0.05]
    y = rng.integers(0, 2, size=8).astype(np.int32)
    x_adv = adversarial.pgd(linear_apply, params, jnp.asarray(x),
                            jnp.asarray(y), self.key, eps=eps, steps=10,
                            step_size=eps / 4, random_start=random_start)
    for i in range(8):
      d = w[:, y[i]] - w[:, 1 - y[i]]
      np.testing.assert_allclose(np.asarray(x_adv[i]),
                                 worst_corner(x[i], d, eps), atol=1e-6)

  def test_multiclass_linear_worst_case(self):
    # Classes o != y have w_o = w_y - c_o d with c_o > 0: every margin
    # (w_y - w_o).x = c_o d.x is minimised by the same corner, which is
    # therefore the exact worst case for the cross-entropy as well.
    rng = np.random.default_rng(6)
    dim, eps, label = 9, 0.2, 2
    d = rng.normal(size=dim)
    w_y = rng.normal(size=dim)
    coefs = [0.5, 1.0, 0.0, 2.0]
    w = np.stack([w_y - c * d for c in coefs], axis=1).astype(np.float32)
    params = {'w': jnp.asarray(w), 'b': jnp.zeros(4, jnp.float32)}
    x = rng.uniform(size=(6, 3, 3, 1)).astype(np.float32)
    y = jnp.full((6,), label, jnp.int32)
    # 4 steps of 0.6 eps cover the 2 eps from any random start to the corner.
    x_adv = adversarial.pgd(linear_apply, params, jnp.asarray(x), y, self.key,
                            eps=eps, steps=4, step_size=0.6 * eps)
    for i in range(6):
      np.testing.assert_allclose(np.asarray(x_adv[i]).ravel(),
                                 worst_corner(x[i].ravel(), d, eps), atol=1e-6)

  @parameterized.parameters(False, True)
  def test_fgsm_is_one_signed_step(self, targeted):
    eps = 0.05
    w, b = np.asarray(self.params['w']), np.asarray(self.params['b'])
    x = np.asarray(self.x).reshape(6, -1)
    y = np.asarray(self.y)
    temperature = 2.0
    p = np.exp(np_log_softmax((x @ w + b) / temperature))
    onehot = np.eye(4)[y]
    grad = (p - onehot) @ w.T / temperature   # d CE / d x
    sign = -1.0 if targeted else 1.0
    expected = np.clip(x + sign * eps * np.sign(grad), 0, 1).reshape(
        self.x.shape)
    got = adversarial.fgsm(linear_apply, self.params, self.x, self.y, eps=eps,
                           temperature=temperature, targeted=targeted)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)
    # And FGSM is PGD with one step of size eps, no random start.
    via_pgd = adversarial.pgd(linear_apply, self.params, self.x, self.y,
                              self.key, eps=eps, steps=1, step_size=eps,
                              random_start=False, temperature=temperature,
                              targeted=targeted)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(via_pgd))

  def test_targeted_moves_toward_target(self):
    target = jnp.full((6,), 3, jnp.int32)
    x_adv = adversarial.pgd(linear_apply, self.params, self.x, target,
                            self.key, eps=0.1, steps=4, step_size=0.05,
                            targeted=True)
    self.assertTrue(np.all(np_ce(self.params, x_adv, target)
                           < np_ce(self.params, self.x, target)))
    # With a large radius every example is pushed into the target class.
    x_big = adversarial.pgd(linear_apply, self.params, self.x, target,
                            self.key, eps=1.0, steps=4, step_size=0.3,
                            targeted=True)
    np.testing.assert_array_equal(
        np_logits(self.params, x_big).argmax(-1), np.asarray(target))

  def test_keep_best_never_weaker(self):
    kwargs = dict(eps=0.08, steps=4, step_size=0.05)
    last = adversarial.pgd(linear_apply, self.params, self.x, self.y,
                           self.key, **kwargs)
    best = adversarial.pgd(linear_apply, self.params, self.x, self.y,
                           self.key, keep_best=True, **kwargs)
    y = np.asarray(self.y)
    fooled_last = np_logits(self.params, last).argmax(-1) != y
    fooled_best = np_logits(self.params, best).argmax(-1) != y
    self.assertTrue(np.all(fooled_best >= fooled_last))
    self.assertTrue(0 < fooled_best.sum() < 6)  # both cases occur
    neither = ~fooled_best
    self.assertTrue(np.all(np_ce(self.params, best, y)[neither]
                           >= np_ce(self.params, last, y)[neither] - 1e-5))

  def _distilled_toy(self):
    """A 'distilled' binary linear model: logits scaled by 1000.

    64 inputs at 0.5 +- 0.01; clean margin (class 0 over 1) in [0.4, 0.8];
    the eps = 0.1 corner lowers it by exactly 1.0 (flip possible) while a
    random start lowers it by far less than 0.4 (so at T = 1 the scaled
    margin stays > 100 and the float32 softmax is saturated).
    """
    dim, s = 64, 1.0 / 6.4
    rng = np.random.default_rng(7)
    x = (0.5 + rng.uniform(-0.01, 0.01, size=(5, dim))).astype(np.float32)
    w = np.stack([np.full(dim, s / 2), np.full(dim, -s / 2)], 1)
    b = np.array([-2.2, 2.2])
    margin = x @ (w[:, 0] - w[:, 1]) + b[0] - b[1]
    assert np.all((margin > 0.4) & (margin < 0.8)), margin
    params = {'w': jnp.asarray(1000 * w, jnp.float32),
              'b': jnp.asarray(1000 * b, jnp.float32)}
    return params, jnp.asarray(x), jnp.zeros(5, jnp.int32)

  def test_temperature_defeats_distillation(self):
    params, x, y = self._distilled_toy()
    grad = jax.jit(jax.grad(lambda z: jnp.sum(adversarial.cross_entropy(
        linear_apply(params, z), y))))(x)
    self.assertEqual(float(jnp.abs(grad).max()), 0.0)  # the premise
    kwargs = dict(eps=0.1, steps=10, step_size=0.03)
    # T = 1: zero gradient, PGD never leaves its start.
    stuck = adversarial.pgd(linear_apply, params, x, y, self.key,
                            random_start=False, **kwargs)
    np.testing.assert_array_equal(np.asarray(stuck), np.asarray(x))
    # With a random start: two step sizes too small to reach a corner in 10
    # steps give the same point, so neither moved from the (common) start.
    start = adversarial.pgd(linear_apply, params, x, y, self.key, eps=0.1,
                            steps=10, step_size=0.001)
    later = adversarial.pgd(linear_apply, params, x, y, self.key, eps=0.1,
                            steps=10, step_size=0.002)
    np.testing.assert_array_equal(np.asarray(start), np.asarray(later))
    self.assertGreater(float(jnp.abs(later - x).max()), 0.0)  # did start
    np.testing.assert_array_equal(np_logits(params, later).argmax(-1), 0)
    # T = 1000: the attack works, and its examples fool the model at T = 1.
    x_adv = adversarial.pgd(linear_apply, params, x, y, self.key,
                            temperature=1000.0, **kwargs)
    np.testing.assert_array_equal(np_logits(params, x_adv).argmax(-1), 1)
    self.assertLessEqual(float(jnp.abs(x_adv - x).max()), 0.1 + 1e-6)

  def test_jit_and_vmap_over_clients_and_eps(self):
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), self.params,
                           random_linear(2, 9, 4, scale=3.0))

    def attack(params, eps):
      return adversarial.pgd(linear_apply, params, self.x, self.y, self.key,
                             eps=eps, steps=4, step_size=0.07)

    batched = jax.jit(jax.vmap(attack))(stacked, jnp.array([0.05, 0.1]))
    for c, eps in enumerate([0.05, 0.1]):
      one = attack(jax.tree.map(lambda a: a[c], stacked), eps)
      np.testing.assert_allclose(np.asarray(batched[c]), np.asarray(one),
                                 atol=1e-6)

  def test_per_example_keys_are_batch_independent(self):
    # With one key per example, permuting the batch (examples with their
    # keys) permutes the result; with one key for the batch it does not.
    perm = np.array([3, 0, 5, 1, 4, 2])
    kwargs = dict(eps=0.1, steps=4, step_size=0.07)
    keys = jax.random.split(self.key, 6)
    full = adversarial.pgd(linear_apply, self.params, self.x, self.y, keys,
                           **kwargs)
    permuted = adversarial.pgd(linear_apply, self.params, self.x[perm],
                               self.y[perm], keys[perm], **kwargs)
    np.testing.assert_allclose(np.asarray(full)[perm], np.asarray(permuted),
                               atol=1e-6)
    one = adversarial.pgd(linear_apply, self.params, self.x[perm],
                          self.y[perm], self.key, steps=4, eps=0.1,
                          step_size=1e-5)
    self.assertGreater(np.abs(np.asarray(one) - np.asarray(permuted)).max(),
                       1e-3)

  @parameterized.named_parameters(
      ('neg_eps', dict(eps=-0.1), '-0.1'),
      ('nan_eps', dict(eps=float('nan')), 'nan'),
      ('zero_steps', dict(steps=0), 'steps'),
      ('float_steps', dict(steps=2.0), 'steps'),
      ('zero_step_size', dict(step_size=0.0), 'step_size'),
      ('zero_temperature', dict(temperature=0.0), 'temperature'),
      ('neg_temperature', dict(temperature=-2.0), '-2.0'),
      ('bad_box', dict(lo=1.0, hi=0.0), 'lo'),
  )
  def test_bad_hyperparameters(self, override, fragment):
    kwargs = dict(eps=0.1, steps=2, step_size=0.05)
    kwargs.update(override)
    with self.assertRaisesRegex(ValueError, fragment):
      adversarial.pgd(linear_apply, self.params, self.x, self.y, self.key,
                      **kwargs)

  def test_bad_arrays(self):
    kwargs = dict(eps=0.1, steps=2, step_size=0.05)
    with self.assertRaisesRegex(ValueError, 'floating'):
      adversarial.pgd(linear_apply, self.params, self.x.astype(jnp.int32),
                      self.y, self.key, **kwargs)
    with self.assertRaisesRegex(ValueError, 'shape'):
      adversarial.pgd(linear_apply, self.params, self.x, self.y[:3], self.key,
                      **kwargs)
    with self.assertRaisesRegex(ValueError, 'keys'):
      adversarial.pgd(linear_apply, self.params, self.x, self.y,
                      jax.random.split(self.key, 4), **kwargs)
    with self.assertRaisesRegex(ValueError, 'eps'):
      adversarial.fgsm(linear_apply, self.params, self.x, self.y, eps=0.0)

  def test_model_zoo_mlp(self):
    from fl_jax import models  # pylint: disable=g-import-not-at-top
    model = models.get_model('mlp', (28, 28, 1), 10)
    # Random weights of the right shapes (cheaper than running the init).
    shapes = jax.eval_shape(model.init, jax.random.key(1))
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)
    x = jnp.asarray(rng.uniform(size=(4, 28, 28, 1)), jnp.float32)
    y = jnp.array([0, 1, 2, 3])

    @jax.jit
    def attack_and_losses(params, x):
      x_adv = adversarial.pgd(model.apply, params, x, y, self.key, eps=0.1,
                              steps=3, step_size=0.04)
      loss = lambda z: jnp.mean(adversarial.cross_entropy(
          model.apply(params, z), y))
      return x_adv, loss(x), loss(x_adv)

    x_adv, clean_loss, adv_loss = attack_and_losses(params, x)
    self.assertLessEqual(float(jnp.abs(x_adv - x).max()), 0.1 + 1e-6)
    self.assertTrue(bool(jnp.all((x_adv >= 0) & (x_adv <= 1))))
    self.assertGreater(float(adv_loss), float(clean_loss))


class LossTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(11)
    self.dim = 10
    w = rng.normal(size=(self.dim, 2)).astype(np.float32)
    self.params = {'w': jnp.asarray(w), 'b': jnp.asarray([0.1, -0.1])}
    self.x = jnp.asarray(rng.uniform(size=(4, self.dim)), jnp.float32)
    self.y = jnp.asarray([0, 1, 1, 0], jnp.int32)
    self.key = jax.random.key(3)

  @parameterized.parameters(1.0, 4.0)
  def test_standard_loss_by_hand(self, temperature):
    loss = adversarial.standard_loss(linear_apply, temperature)(
        self.params, self.x, self.y, self.key)
    logits = (np.asarray(self.x) @ np.asarray(self.params['w'])
              + np.asarray(self.params['b']))
    expected = -np_log_softmax(logits / temperature)[np.arange(4), self.y]
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-5)

  def test_soft_label_loss(self):
    temperature = 3.0
    onehot = jax.nn.one_hot(self.y, 2)
    soft = adversarial.soft_label_loss(linear_apply, temperature)
    hard = adversarial.standard_loss(linear_apply, temperature)
    np.testing.assert_allclose(
        np.asarray(soft(self.params, self.x, onehot, None)),
        np.asarray(hard(self.params, self.x, self.y, None)), rtol=1e-5)
    q = adversarial.soft_labels(linear_apply, self.params, self.x,
                                temperature=temperature)
    np.testing.assert_allclose(np.asarray(q.sum(-1)), 1.0, rtol=1e-6)
    logp = np_log_softmax(np.asarray(linear_apply(self.params, self.x))
                          / temperature)
    q_np = np.asarray(q)
    np.testing.assert_allclose(
        np.asarray(soft(self.params, self.x, q, None)),
        -(q_np * logp).sum(-1), rtol=1e-5)

  def test_adversarial_loss_fraction(self):
    kwargs = dict(eps=0.1, steps=5, step_size=0.05)
    std = adversarial.standard_loss(linear_apply)(self.params, self.x, self.y,
                                                  self.key)
    zero = adversarial.adversarial_loss(linear_apply, fraction=0.0, **kwargs)
    np.testing.assert_array_equal(
        np.asarray(zero(self.params, self.x, self.y, self.key)),
        np.asarray(std))
    full = adversarial.adversarial_loss(linear_apply, **kwargs)(
        self.params, self.x, self.y, self.key)
    # Binary linear model: PGD reaches the worst corner, the loss maximiser.
    self.assertTrue(np.all(np.asarray(full) > np.asarray(std)))
    half = adversarial.adversarial_loss(linear_apply, fraction=0.5, **kwargs)(
        self.params, self.x, self.y, self.key)
    self.assertTrue(np.all(np.asarray(half[:2]) > np.asarray(std[:2])))
    np.testing.assert_array_equal(np.asarray(half[2:]), np.asarray(std[2:]))
    self.assertEqual(adversarial.num_adversarial(4, 0.5), 2)
    self.assertEqual(adversarial.num_adversarial(3, 0.5), 2)
    self.assertEqual(adversarial.num_adversarial(10, 0.04), 0)

  def test_adversarial_loss_gradient_stops_at_attack(self):
    # The gradient w.r.t. params is that of the CE at the (constant) PGD
    # examples: for the linear model, X_adv^T (P - Y) / B and mean(P - Y).
    kwargs = dict(eps=0.1, steps=5, step_size=0.05)
    loss_fn = adversarial.adversarial_loss(linear_apply, **kwargs)
    grad = jax.jit(jax.grad(
        lambda p: jnp.mean(loss_fn(p, self.x, self.y, self.key))))(self.params)
    x_adv = np.asarray(adversarial.pgd(linear_apply, self.params, self.x,
                                       self.y, self.key, **kwargs), np.float64)
    p = np.exp(np_log_softmax(np_logits(self.params, x_adv)))
    r = (p - np.eye(2)[np.asarray(self.y)]) / 4
    np.testing.assert_allclose(np.asarray(grad['w']), x_adv.T @ r, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad['b']), r.sum(0), rtol=1e-4,
                               atol=1e-6)

  def test_bad_loss_arguments(self):
    kwargs = dict(eps=0.1, steps=2, step_size=0.05)
    for fraction in (-0.1, 1.5):
      with self.assertRaisesRegex(ValueError, str(fraction)):
        adversarial.adversarial_loss(linear_apply, fraction=fraction, **kwargs)
    with self.assertRaisesRegex(ValueError, 'steps'):
      adversarial.adversarial_loss(linear_apply, eps=0.1, steps=0,
                                   step_size=0.1)
    with self.assertRaisesRegex(ValueError, 'temperature'):
      adversarial.standard_loss(linear_apply, 0.0)
    with self.assertRaisesRegex(ValueError, 'soft labels'):
      adversarial.soft_label_loss(linear_apply)(
          self.params, self.x, jnp.ones((4, 3)) / 3, None)


if __name__ == '__main__':
  absltest.main()
