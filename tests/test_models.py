"""Models: shapes, parameter counts, and identical maths for both conv impls."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import models

SHAPES = {'mnist_cnn': (28, 28, 1), 'cifar_cnn': (32, 32, 3), 'lenet5': (28, 28, 1),
          'vgg9': (32, 32, 3), 'mlp': (28, 28, 1)}


class ModelsTest(parameterized.TestCase):

  @parameterized.parameters(*SHAPES)
  def test_conv_impls_agree_and_shapes(self, name):
    shape = SHAPES[name]
    a = models.get_model(name, shape, 10, conv_impl='xla')
    b = models.get_model(name, shape, 10, conv_impl='patches')
    params = a.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2,) + shape)
    ya, yb = jax.jit(a.apply)(params, x), jax.jit(b.apply)(params, x)
    self.assertEqual(ya.shape, (2, 10))
    np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-4)
    # Gradients agree too (the training path uses them).
    ga = jax.jit(jax.grad(lambda p: jnp.sum(a.apply(p, x) ** 2)))(params)
    gb = jax.jit(jax.grad(lambda p: jnp.sum(b.apply(p, x) ** 2)))(params)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
      np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-4)

  @parameterized.parameters(*SHAPES)
  def test_features_feed_the_last_layer(self, name):
    m = models.get_model(name, SHAPES[name], 10)
    params = m.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2,) + SHAPES[name])
    feats = jax.jit(m.features)(params, x)
    last = jax.tree.leaves(params)[-2:]  # bias, kernel of the last dense layer
    bias, kernel = sorted(last, key=lambda a: a.ndim)
    np.testing.assert_allclose(feats @ kernel + bias, jax.jit(m.apply)(params, x),
                               rtol=1e-4, atol=1e-4)
    self.assertTrue(np.all(feats >= 0))  # ReLU outputs

  def test_parameter_counts_by_hand(self):
    mnist = models.get_model('mnist_cnn', (28, 28, 1), 10)
    # conv 1->16 4x4, conv 16->32 4x4, FC 7*7*32 -> 1000, FC 1000 -> 10.
    expected = (16 * 16 + 16) + (16 * 32 * 16 + 32) + (1568 * 1000 + 1000) + (1000 * 10 + 10)
    self.assertEqual(models.num_params(mnist.init(jax.random.key(0))), expected)
    vgg = models.get_model('vgg9', (32, 32, 3), 10)
    widths = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    expected = sum(9 * i * o + o for i, o in zip(widths[:-1], widths[1:])) + 512 * 10 + 10
    self.assertEqual(models.num_params(vgg.init(jax.random.key(0))), expected)

  def test_init_is_deterministic_and_key_dependent(self):
    m = models.get_model('mlp', (4, 4, 1), 3)
    p0, p0b, p1 = (m.init(jax.random.key(s)) for s in (0, 0, 1))
    for u, v in zip(jax.tree.leaves(p0), jax.tree.leaves(p0b)):
      np.testing.assert_array_equal(u, v)
    self.assertFalse(np.allclose(p0['fcs'][0]['kernel'], p1['fcs'][0]['kernel']))

  def test_vmap_over_stacked_params(self):
    m = models.get_model('mlp', (4, 4, 1), 3)
    ps = [m.init(jax.random.key(s)) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *ps)
    x = jnp.ones((2, 4, 4, 1))
    out = jax.vmap(m.apply, in_axes=(0, None))(stacked, x)
    for i, p in enumerate(ps):
      np.testing.assert_allclose(out[i], m.apply(p, x), rtol=1e-6)

  @parameterized.parameters(
      ('resnet', (28, 28, 1), 10, 'unknown model'),
      ('mlp', (28, 28), 10, 'input_shape'),
      ('mlp', (28, 0, 1), 10, 'input_shape'),
      ('mlp', (28, 28, 1), 1, 'num_classes'),
      ('vgg9', (16, 16, 3), 10, '32x32'))
  def test_bad_input(self, name, shape, classes, msg):
    with self.assertRaisesRegex(ValueError, msg):
      models.get_model(name, shape, classes).init(jax.random.key(0))

  def test_bad_conv_impl(self):
    with self.assertRaisesRegex(ValueError, 'cudnn'):
      models.get_model('mnist_cnn', (28, 28, 1), 10, conv_impl='cudnn').init(jax.random.key(0))


if __name__ == '__main__':
  absltest.main()
