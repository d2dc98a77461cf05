"""Tests for fl_jax.metrics: clean / PGD / per-client accuracy, AP ratio, writers."""
import os
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from fl_jax import metrics
from fl_jax.metrics import tensorboard as tb_lib

TRACES = [0]


def linear_apply(params, x):
  return x.reshape(x.shape[0], -1) @ params['w'] + params['b']


def counting_apply(params, x):
  TRACES[0] += 1
  return linear_apply(params, x)


def np_logits(params, x):
  x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
  return x @ np.asarray(params['w'], np.float64) + np.asarray(params['b'])


def linear_params(seed, dim, classes, scale=1.0):
  rng = np.random.default_rng(seed)
  w = scale * rng.normal(size=(dim, classes))
  return {'w': jnp.asarray(w, jnp.float32),
          'b': jnp.asarray(scale * rng.normal(size=(classes,)), jnp.float32)}


class AccuracyTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.params = linear_params(1, 4, 3)
    self.x = jnp.asarray(rng.uniform(size=(23, 2, 2, 1)), jnp.float32)
    pred = np_logits(self.params, self.x).argmax(-1)
    wrong = np.zeros(23, bool)
    wrong[[0, 4, 5, 11, 22]] = True
    self.y = jnp.asarray(np.where(wrong, (pred + 1) % 3, pred), jnp.int32)

  @parameterized.parameters(1, 5, 7, 23, 1000)
  def test_accuracy_by_hand_for_any_chunk(self, chunk_size):
    acc = metrics.accuracy(linear_apply, self.params, self.x, self.y,
                           chunk_size=chunk_size)
    self.assertEqual(acc.dtype, jnp.float32)
    np.testing.assert_allclose(float(acc), 18 / 23, rtol=1e-7)

  def test_no_retrace(self):
    other = linear_params(2, 4, 3)
    metrics.accuracy(counting_apply, self.params, self.x, self.y, 5)
    before = TRACES[0]
    acc = metrics.accuracy(counting_apply, other, self.x, self.y, 5)
    self.assertEqual(TRACES[0], before)
    expected = np.mean(np_logits(other, self.x).argmax(-1) == self.y)
    np.testing.assert_allclose(float(acc), expected, rtol=1e-6)

    key = jax.random.key(0)
    metrics.pgd_accuracy(counting_apply, self.params, self.x, self.y, key,
                         [0.1], steps=2, chunk_size=8)
    before = TRACES[0]
    metrics.pgd_accuracy(counting_apply, other, self.x, self.y, key,
                         [0.0, 0.2, 0.3], steps=2, chunk_size=8)
    self.assertEqual(TRACES[0], before)

    cx, cy = self.x[:20].reshape(4, 5, 2, 2, 1), self.y[:20].reshape(4, 5)
    mask = jnp.ones((4, 5), bool)
    metrics.per_client_accuracy(counting_apply, self.params, cx, cy, mask)
    before = TRACES[0]
    metrics.per_client_accuracy(counting_apply, other, cx, cy, mask)
    self.assertEqual(TRACES[0], before)

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, 'chunk_size'):
      metrics.accuracy(linear_apply, self.params, self.x, self.y, 0)
    with self.assertRaisesRegex(ValueError, 'shape'):
      metrics.accuracy(linear_apply, self.params, self.x, self.y[:5])
    with self.assertRaisesRegex(ValueError, 'empty'):
      metrics.accuracy(linear_apply, self.params, self.x[:0], self.y[:0])
    with self.assertRaisesRegex(ValueError, 'integer'):
      metrics.accuracy(linear_apply, self.params, self.x,
                       self.y.astype(jnp.float32))


class PGDAccuracyTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(3)
    self.dim = 8
    self.w = rng.normal(size=(self.dim, 2)).astype(np.float32)
    self.b = np.array([0.2, -0.1], np.float32)
    self.params = {'w': jnp.asarray(self.w), 'b': jnp.asarray(self.b)}
    self.x = rng.uniform(size=(20, self.dim)).astype(np.float32)
    self.y = rng.integers(0, 2, size=20).astype(np.int32)
    self.key = jax.random.key(4)

  def exact_robust_accuracy(self, eps):
    """Binary linear model: robust iff the worst corner keeps margin > 0."""
    robust = []
    for x, y in zip(self.x.astype(np.float64), self.y):
      d = self.w[:, y] - self.w[:, 1 - y]
      corner = np.clip(x - eps * np.sign(d), 0, 1)
      robust.append(d @ corner + self.b[y] - self.b[1 - y] > 0)
    return np.mean(robust)

  def test_matches_exact_robust_accuracy(self):
    eps_list = [0.0, 0.05, 0.1, 0.3]
    got = metrics.pgd_accuracy(linear_apply, self.params, jnp.asarray(self.x),
                               jnp.asarray(self.y), self.key, eps_list,
                               steps=10, chunk_size=7)
    self.assertEqual(sorted(got), eps_list)
    expected = [self.exact_robust_accuracy(e) for e in eps_list]
    self.assertTrue(expected[0] > expected[2] > expected[3])  # non-trivial
    for eps, want in zip(eps_list, expected):
      np.testing.assert_allclose(float(got[eps]), want, rtol=1e-6)
    clean = metrics.accuracy(linear_apply, self.params, jnp.asarray(self.x),
                             jnp.asarray(self.y))
    self.assertEqual(float(got[0.0]), float(clean))

  def test_chunk_invariance_and_restarts(self):
    # One short step: the result depends on the random starts, which are
    # keyed per example, so any chunking gives the same answer.
    kwargs = dict(steps=1, step_size=0.04)
    x, y = jnp.asarray(self.x), jnp.asarray(self.y)
    results = [
        metrics.pgd_accuracy(linear_apply, self.params, x, y, self.key, 0.2,
                             chunk_size=c, **kwargs)[0.2] for c in (3, 20)]
    self.assertEqual(len({float(r) for r in results}), 1)
    # Restart 0 is shared, so more restarts can only find more failures.
    three = metrics.pgd_accuracy(linear_apply, self.params, x, y, self.key,
                                 0.2, restarts=3, chunk_size=20, **kwargs)[0.2]
    self.assertLessEqual(float(three), float(results[0]))
    self.assertGreaterEqual(float(three), self.exact_robust_accuracy(0.2))

  def test_crafting_temperature_against_distilled_toy(self):
    # Logits scaled by 1000: the float32 softmax saturates at T = 1 and PGD
    # has no gradient; crafting at T = 1000 flips every example (the eps
    # corner lowers every margin by 1.0 > the clean margin of 0.6).
    dim = 64
    x = jnp.full((6, dim), 0.5)
    s = 1.0 / 6.4
    params = {
        'w': 1000 * jnp.stack([jnp.full(dim, s / 2), jnp.full(dim, -s / 2)], 1),
        'b': 1000 * jnp.array([-2.2, 2.2])}
    y = jnp.zeros(6, jnp.int32)
    kwargs = dict(steps=10, chunk_size=4)
    plain = metrics.pgd_accuracy(linear_apply, params, x, y, self.key, [0.1],
                                 **kwargs)
    tempered = metrics.pgd_accuracy(linear_apply, params, x, y, self.key,
                                    [0.1], temperature=1000.0, **kwargs)
    self.assertEqual(float(plain[0.1]), 1.0)
    self.assertEqual(float(tempered[0.1]), 0.0)

  @parameterized.named_parameters(
      ('neg_eps', dict(eps_list=[0.1, -0.2]), '-0.2'),
      ('empty_eps', dict(eps_list=[]), 'empty'),
      ('zero_steps', dict(steps=0), 'steps'),
      ('zero_restarts', dict(restarts=0), 'restarts'),
      ('zero_step_size', dict(step_size=0.0), 'step_size'),
      ('zero_temperature', dict(temperature=0.0), 'temperature'),
      ('restarts_no_start', dict(restarts=2, random_start=False), 'restarts'),
      ('zero_chunk', dict(chunk_size=0), 'chunk_size'),
  )
  def test_bad_inputs(self, override, fragment):
    kwargs = dict(eps_list=[0.1])
    kwargs.update(override)
    with self.assertRaisesRegex(ValueError, fragment):
      metrics.pgd_accuracy(linear_apply, self.params, jnp.asarray(self.x),
                           jnp.asarray(self.y), self.key, **kwargs)


class ClientMetricsTest(absltest.TestCase):

  def test_per_client_accuracy_by_hand(self):
    rng = np.random.default_rng(8)
    params = linear_params(9, 3, 3)
    cx = rng.uniform(size=(3, 4, 3)).astype(np.float32)
    pred = np_logits(params, cx.reshape(12, 3)).argmax(-1).reshape(3, 4)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
    correct = np.array([[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], bool)
    # Padded slots are labelled correctly, so counting them would show.
    cy = np.where(correct | ~mask, pred, (pred + 1) % 3).astype(np.int32)
    acc = metrics.per_client_accuracy(linear_apply, params, jnp.asarray(cx),
                                      jnp.asarray(cy), jnp.asarray(mask))
    self.assertEqual(acc.shape, (3,))
    np.testing.assert_allclose(np.asarray(acc[:2]), [2 / 3, 1 / 2], rtol=1e-6)
    self.assertTrue(np.isnan(float(acc[2])))  # no data: undefined
    np.testing.assert_allclose(float(metrics.ap_ratio(acc)), 0.75, rtol=1e-6)
    with self.assertRaisesRegex(ValueError, 'client_mask'):
      metrics.per_client_accuracy(linear_apply, params, jnp.asarray(cx),
                                  jnp.asarray(cy), jnp.asarray(mask[:, :3]))

  def test_ap_ratio_by_hand(self):
    cases = [([0.5, 1.0, 0.25], 0.25), ([0.8, 0.8], 1.0), ([0.6], 1.0),
             ([0.0, 0.5], 0.0), ([0.0, 0.0], 0.0),
             ([np.nan, 0.5, 0.4], 0.8)]
    for acc, want in cases:
      got = metrics.ap_ratio(jnp.asarray(acc, jnp.float32))
      np.testing.assert_allclose(float(got), want, rtol=1e-6, err_msg=str(acc))
    self.assertTrue(np.isnan(float(metrics.ap_ratio(jnp.array([np.nan])))))
    self.assertAlmostEqual(
        float(jax.jit(metrics.ap_ratio)(jnp.array([0.3, 0.6]))), 0.5, places=6)
    with self.assertRaisesRegex(ValueError, r'\[K\]'):
      metrics.ap_ratio(jnp.ones((2, 2)))
    with self.assertRaisesRegex(ValueError, r'\[K\]'):
      metrics.ap_ratio(jnp.ones((0,)))
    with self.assertRaisesRegex(ValueError, '1.5'):
      metrics.ap_ratio(jnp.array([0.5, 1.5]))

  def test_selection_counts_by_hand(self):
    ids = np.array([[0, 3, 4], [1, 3, 2], [4, 0, -1]], np.int32)
    sel = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0]], bool)
    counts = metrics.selection_counts(jnp.asarray(sel), jnp.asarray(ids), 6)
    self.assertEqual(counts.dtype, jnp.int32)
    np.testing.assert_array_equal(np.asarray(counts), [2, 0, 1, 2, 1, 0])
    # 0/1 integer masks work too.
    counts01 = metrics.selection_counts(jnp.asarray(sel, jnp.int32),
                                        jnp.asarray(ids), 6)
    np.testing.assert_array_equal(np.asarray(counts01), np.asarray(counts))
    with self.assertRaisesRegex(ValueError, 'same shape'):
      metrics.selection_counts(jnp.asarray(sel[:2]), jnp.asarray(ids), 6)
    with self.assertRaisesRegex(ValueError, r'\[7\]'):
      bad = ids.copy()
      bad[0, 0] = 7
      metrics.selection_counts(jnp.asarray(sel), jnp.asarray(bad), 6)
    with self.assertRaisesRegex(ValueError, 'num_clients'):
      metrics.selection_counts(jnp.asarray(sel), jnp.asarray(ids), 0)


class WriterTest(absltest.TestCase):
  """metrics.jsonl and its TensorBoard events."""

  def test_resumed_writer_purges_dropped_rounds_in_both(self):
    d = self.enterContext(tempfile.TemporaryDirectory())
    path = os.path.join(d, 'metrics.jsonl')
    w = metrics.JsonlWriter(path, tensorboard_dir=d)
    for r in (1, 2, 3):   # a run killed after logging round 3, checkpointed at 1
      w.write({'round': r, 'acc': r / 10, 'ids': [1, 2], 'ok': True, 'loss': float('nan')})
    w.close()
    w = metrics.JsonlWriter(path, tensorboard_dir=d)
    w.truncate_after(1)
    w.write({'round': 2, 'acc': 0.5, 'loss': 1.0})
    w.close()
    self.assertEqual([r['round'] for r in metrics.read_jsonl(path)], [1, 2])
    events = metrics.read_scalars(d)
    self.assertEqual(sorted(events), ['acc', 'loss'])   # lists and bools are not scalars
    np.testing.assert_allclose([v for _, v in events['acc']], [0.1, 0.5], rtol=1e-6)
    self.assertEqual([s for s, _ in events['acc']], [1, 2])
    self.assertTrue(np.isnan(events['loss'][0][1]))
    try:   # TensorBoard's own reader agrees, where it is installed
      from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
    except ImportError:
      return
    acc = event_accumulator.EventAccumulator(d)
    acc.Reload()
    self.assertEqual([(e.step, e.value) for e in acc.Scalars('acc')], events['acc'])

  def test_torn_event_file_is_named(self):
    d = self.enterContext(tempfile.TemporaryDirectory())
    w = metrics.TensorBoardWriter(d)
    w.write({'round': 1, 'acc': 0.5})
    w.close()
    (name,) = os.listdir(d)
    with open(os.path.join(d, name), 'r+b') as f:
      f.truncate(os.path.getsize(os.path.join(d, name)) - 3)
    with self.assertRaisesRegex(ValueError, f'{name}: truncated record'):
      metrics.read_scalars(d)

  def test_without_tensorboardx_one_notice_and_json_lines_only(self):
    d = self.enterContext(tempfile.TemporaryDirectory())
    notices = []
    with mock.patch.dict(sys.modules, {'tensorboardX': None}), \
        mock.patch.object(tb_lib, '_NOTICE_SHOWN', []):
      for _ in range(2):
        w = metrics.TensorBoardWriter(d, notice=notices.append)
        w.write({'round': 1, 'acc': 0.5})
        w.write({'round': 2, 'acc': 0.6})
        w.close()
    self.assertLen(notices, 1)
    self.assertIn('tensorboardX is not installed', notices[0])
    self.assertNotIn('\n', notices[0])
    self.assertEqual(os.listdir(d), [])


if __name__ == '__main__':
  absltest.main()
