"""Client update: hand-computed SGD steps, masking, skipped padding batches."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import client


def sq_loss(params, x, y, key):
  """0.5 * (x . w + b - y)^2 per example; gradient by hand below."""
  del key
  pred = x @ params['w'] + params['b']
  return 0.5 * (pred - y) ** 2


def hand_grad(w, b, x, y):
  r = x @ w + b - y
  return x.T @ r / len(y), np.mean(r)


class ClientUpdateTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.x = rng.normal(size=(4, 3)).astype(np.float32)
    self.y = rng.normal(size=(4,)).astype(np.float32)
    self.params = {'w': np.array([0.5, -1.0, 2.0], np.float32), 'b': np.float32(0.3)}

  def run_update(self, hp, x, y, mask, round_idx=0):
    fn = jax.jit(client.make_client_update(sq_loss, hp))
    return fn(self.params, client.ClientBatch(jnp.asarray(x), jnp.asarray(y)),
              jnp.asarray(mask), jax.random.key(0), round_idx)

  def test_two_full_batch_steps_with_momentum_and_weight_decay(self):
    lr, mu, wd, decay, rnd = 0.1, 0.9, 0.01, 0.5, 2
    hp = client.LocalSGD(local_epochs=2, batch_size=4, lr=lr, lr_decay=decay,
                         momentum=mu, weight_decay=wd)
    new, metrics = self.run_update(hp, self.x, self.y, np.ones(4, bool), rnd)
    # By hand: g <- g + wd * w; v <- mu * v + g; w <- w - lr_t * v.
    lr_t = lr * decay ** rnd
    w, b = self.params['w'].astype(np.float64), float(self.params['b'])
    vw, vb = np.zeros(3), 0.0
    for _ in range(2):
      gw, gb = hand_grad(w, b, self.x, self.y)
      vw, vb = mu * vw + gw + wd * w, mu * vb + gb + wd * b
      w, b = w - lr_t * vw, b - lr_t * vb
    np.testing.assert_allclose(new['w'], w, rtol=1e-5)
    np.testing.assert_allclose(new['b'], b, rtol=1e-5)
    self.assertEqual(int(metrics.num_steps), 2)
    self.assertEqual(int(metrics.num_examples), 4)

  def test_padding_is_ignored(self):
    hp = client.LocalSGD(local_epochs=1, batch_size=8, lr=0.1)
    x_pad = np.concatenate([self.x, 100 * np.ones((4, 3), np.float32)])
    y_pad = np.concatenate([self.y, -50 * np.ones(4, np.float32)])
    mask = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    padded, m1 = self.run_update(hp, x_pad, y_pad, mask)
    hp4 = client.LocalSGD(local_epochs=1, batch_size=4, lr=0.1)
    plain, m2 = self.run_update(hp4, self.x, self.y, np.ones(4, bool))
    for u, v in zip(jax.tree.leaves(padded), jax.tree.leaves(plain)):
      np.testing.assert_allclose(u, v, rtol=1e-5)
    np.testing.assert_allclose(m1.train_loss, m2.train_loss, rtol=1e-5)

  def test_only_real_batches_take_steps(self):
    # 3 real samples among 10 slots, batch 2: ceil(3/2) = 2 steps per epoch.
    hp = client.LocalSGD(local_epochs=3, batch_size=2, lr=0.1, momentum=0.5)
    x = np.zeros((10, 3), np.float32)
    x[[1, 5, 8]] = self.x[:3]
    mask = np.zeros(10, bool)
    mask[[1, 5, 8]] = True
    _, metrics = self.run_update(hp, x, np.zeros(10, np.float32), mask)
    self.assertEqual(int(metrics.num_steps), 6)
    self.assertEqual(int(metrics.num_examples), 3)

  def test_empty_client_keeps_params(self):
    hp = client.LocalSGD(local_epochs=1, batch_size=2, lr=0.1, weight_decay=0.1)
    new, metrics = self.run_update(hp, self.x, self.y, np.zeros(4, bool))
    np.testing.assert_array_equal(new['w'], self.params['w'])
    self.assertEqual(int(metrics.num_steps), 0)
    self.assertTrue(np.isfinite(metrics.train_loss))

  def test_shuffle_depends_on_key_only(self):
    hp = client.LocalSGD(local_epochs=1, batch_size=1, lr=0.1)
    fn = jax.jit(client.make_client_update(sq_loss, hp))
    data = client.ClientBatch(jnp.asarray(self.x), jnp.asarray(self.y))
    mask = jnp.ones(4, bool)
    a, _ = fn(self.params, data, mask, jax.random.key(1), 0)
    b, _ = fn(self.params, data, mask, jax.random.key(1), 0)
    c, _ = fn(self.params, data, mask, jax.random.key(2), 0)
    np.testing.assert_array_equal(a['w'], b['w'])
    self.assertFalse(np.allclose(a['w'], c['w']))

  @parameterized.parameters(
      ({'local_epochs': 0}, 'local_epochs'), ({'batch_size': -1}, 'batch_size'),
      ({'lr': 0.0}, 'lr'), ({'lr_decay': 1.5}, 'lr_decay'),
      ({'momentum': 1.0}, 'momentum'), ({'weight_decay': -1e-4}, 'weight_decay'))
  def test_bad_hyper_parameters(self, kwargs, name):
    with self.assertRaisesRegex(ValueError, name):
      client.make_client_update(sq_loss, client.LocalSGD(**kwargs))


if __name__ == '__main__':
  absltest.main()
