"""Tests for fl_jax.data.edge_sets: MNIST styling, UCI digits, ARDIS, splits."""
import functools
import gzip
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fl_jax import data
from fl_jax.data import edge_sets


def ink_box(image):
  """(height, width) of the bounding box of pixels > 0 of a 2-D image."""
  rows = np.flatnonzero((image > 0).any(axis=1))
  cols = np.flatnonzero((image > 0).any(axis=0))
  return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@functools.lru_cache(maxsize=None)
def uci(split, seed=0):
  return data.load_uci_digits(7, split=split, seed=seed)


class MnistStyleTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(top=2, left=3, h=3, w=5), dict(top=0, left=0, h=5, w=3),
      dict(top=6, left=1, h=4, w=4), dict(top=1, left=7, h=2, w=3))
  def test_block_box_aspect_and_centre(self, top, left, h, w):
    image = np.zeros((10, 10), np.uint8)
    image[top:top + h, left:left + w] = 255
    out = data.mnist_style(image[None])
    self.assertEqual(out.shape, (1, 28, 28, 1))
    self.assertEqual(out.dtype, np.float32)
    self.assertGreaterEqual(out.min(), 0.0)
    self.assertLessEqual(out.max(), 1.0)
    box_h, box_w = ink_box(out[0, ..., 0])
    self.assertEqual(max(box_h, box_w), 20)
    # Aspect ratio kept up to the rounding of the shorter side.
    self.assertAlmostEqual(min(box_h, box_w), 20 * min(h, w) / max(h, w),
                           delta=0.5)
    # MNIST puts the centre of mass at pixel 14 (size / 2) by an integer
    # shift, so within half a pixel.
    com = edge_sets.centre_of_mass(out)[0]
    np.testing.assert_array_less(np.abs(com - 14.0), 0.5 + 1e-9)

  def test_mnist_itself_has_this_convention(self):
    # The convention the function reproduces, checked on real MNIST.
    x = data.load_dataset('mnist', 'test').x[:500]
    com = edge_sets.centre_of_mass(x)
    self.assertTrue(np.all(np.abs(com - 14.0) <= 0.53))
    sides = [max(ink_box(a[..., 0])) for a in x]
    self.assertGreaterEqual(np.mean(np.equal(sides, 20)), 0.99)

  def test_solid_block_stays_solid(self):
    image = np.zeros((10, 10))
    image[2:5, 3:8] = 7.0
    out = data.mnist_style(image[None, ..., None])[0, ..., 0]
    ink = out[out > 0]
    self.assertEqual(ink.size, 12 * 20)
    np.testing.assert_allclose(ink, 1.0, atol=1e-6)

  def test_shrinking_is_anti_aliased(self):
    # A one-pixel checkerboard, shrunk from 40 to 20, averages to grey.
    image = (np.indices((40, 40)).sum(axis=0) % 2).astype(np.float64)
    out = data.mnist_style(image[None], max_value=1.0)[0, ..., 0]
    inner = out[6:20, 6:20]
    np.testing.assert_allclose(inner, 0.5, atol=0.1)

  def test_max_value_defaults(self):
    image = np.zeros((1, 8, 8), np.int64)
    image[0, 2:6, 3:5] = 16
    out = data.mnist_style(image)  # Own max: 16 -> 1.
    self.assertAlmostEqual(float(out.max()), 1.0, places=6)
    half = data.mnist_style(image, max_value=32)
    self.assertAlmostEqual(float(half.max()), 0.5, places=6)
    as_uint8 = data.mnist_style(image.astype(np.uint8))  # 16 / 255.
    self.assertAlmostEqual(float(as_uint8.max()), 16 / 255, places=6)
    as_bool = data.mnist_style(image > 0)  # True -> 1.
    self.assertAlmostEqual(float(as_bool.max()), 1.0, places=6)

  def test_blank_images_named(self):
    x = np.zeros((5, 6, 6), np.uint8)
    x[[0, 2, 3], 2, 2] = 200
    with self.assertRaisesRegex(ValueError, r'indices \[1, 4\]'):
      data.mnist_style(x)

  @parameterized.parameters(
      dict(images=np.ones((2, 3, 3, 3)), match='greyscale'),
      dict(images=np.ones((3, 3)), match='greyscale'),
      dict(images=-np.ones((1, 3, 3)), match='outside'),
      dict(images=np.full((1, 3, 3), np.nan), match='NaN'))
  def test_bad_images(self, images, match):
    with self.assertRaisesRegex(ValueError, match):
      data.mnist_style(images)

  def test_bad_box(self):
    with self.assertRaisesRegex(ValueError, 'box = 30'):
      data.mnist_style(np.ones((1, 3, 3)), box=30)
    with self.assertRaisesRegex(ValueError, r'outside \[0, max_value = 10'):
      data.mnist_style(np.full((1, 3, 3), 20.0), max_value=10)


class UciDigitsTest(absltest.TestCase):

  def test_counts_and_format(self):
    train, test, everything = uci('train'), uci('test'), uci('all')
    self.assertEqual(everything.shape, (179, 28, 28, 1))
    self.assertEqual(train.shape, (134, 28, 28, 1))
    self.assertEqual(test.shape, (45, 28, 28, 1))
    for x in (train, test):
      self.assertEqual(x.dtype, np.float32)
      self.assertGreaterEqual(x.min(), 0.0)
      self.assertLessEqual(x.max(), 1.0)
      com = edge_sets.centre_of_mass(x)
      self.assertTrue(np.all(np.abs(com - 14.0) <= 0.5 + 1e-9))

  def test_deterministic_and_disjoint(self):
    np.testing.assert_array_equal(uci('train'),
                                  data.load_uci_digits(7, split='train'))
    flat = lambda x: {a.tobytes() for a in x}
    train, test = flat(uci('train')), flat(uci('test'))
    self.assertEmpty(train & test)
    self.assertEqual(train | test, flat(uci('all')))
    self.assertNotEqual(flat(uci('test', seed=1)), test)

  def test_out_of_mnist_distribution(self):
    # UCI digits are 32x32 bitmaps block-averaged to 8x8, so enlarged they
    # are blurry: most ink pixels are mid-grey, unlike MNIST's pen strokes.
    def grey_share(x):
      x = x.reshape(len(x), -1)
      return (((x > 0.1) & (x < 0.9)).sum(1) / (x > 0.1).sum(1))
    mnist = data.load_dataset('mnist', 'test')
    mnist7 = mnist.x[mnist.y == 7][:179]
    self.assertGreater(np.median(grey_share(uci('all'))),
                       np.median(grey_share(mnist7)) + 0.2)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, r"'valid'"):
      data.load_uci_digits(7, split='valid')
    with self.assertRaisesRegex(ValueError, 'digit'):
      data.load_uci_digits(10)
    with self.assertRaisesRegex(ValueError, 'test_fraction'):
      data.load_uci_digits(7, test_fraction=1.0)

  def test_missing_sklearn(self):
    with mock.patch.dict(sys.modules, {'sklearn': None}):
      with self.assertRaisesRegex(ImportError, 'pip install'):
        data.load_uci_digits(7)


def fake_ardis(n, seed=0):
  """n 28x28 uint8 images (white strokes on black) and labels i % 10."""
  rng = np.random.default_rng(seed)
  x = np.zeros((n, 28, 28), np.uint8)
  for i in range(n):
    r, c = rng.integers(4, 20, size=2)
    x[i, r:r + 6, c:c + 2] = rng.integers(100, 256)
  return x, np.arange(n) % 10


def write_table(path, rows, sep=',', fmt='%d'):
  text = '\n'.join(sep.join(fmt % v for v in row) for row in rows) + '\n'
  if str(path).endswith('.gz'):
    with gzip.open(path, 'wt') as f:
      f.write(text)
  else:
    Path(path).write_text(text)


def write_ardis(directory, split, x, y, *, sep=',', gz=False, one_hot=True):
  suffix = '.gz' if gz else ''
  images = directory / f'ARDIS_{split}_2828.csv{suffix}'
  labels = directory / f'ARDIS_{split}_labels.csv{suffix}'
  write_table(images, x.reshape(len(x), -1), sep)
  label_rows = np.eye(10)[y] if one_hot else y[:, None]
  write_table(labels, label_rows, sep, fmt='%g')
  return images, labels


class ArdisTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, self.tmp)
    self.x, self.y = fake_ardis(30)

  @parameterized.product(sep=[',', ' ', '\t'], gz=[False, True],
                         one_hot=[False, True])
  def test_round_trip(self, sep, gz, one_hot):
    write_ardis(self.tmp, 'test', self.x, self.y, sep=sep, gz=gz,
                one_hot=one_hot)
    x, y = data.load_ardis(self.tmp, 'test', digit=None)
    self.assertEqual(x.shape, (30, 28, 28, 1))
    self.assertEqual(x.dtype, np.float32)
    np.testing.assert_allclose(x[..., 0], self.x / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, self.y)

  def test_digit_filter_and_options(self):
    write_ardis(self.tmp, 'train', self.x, self.y)
    x, y = data.load_ardis(self.tmp, 'train', digit=7)
    self.assertLen(y, 3)
    np.testing.assert_array_equal(y, 7)
    np.testing.assert_allclose(x[..., 0], self.x[self.y == 7] / 255.0,
                               atol=1e-7)
    xt, _ = data.load_ardis(self.tmp, 'train', digit=7, transpose=True)
    np.testing.assert_array_equal(xt, np.swapaxes(x, 1, 2))
    xi, _ = data.load_ardis(self.tmp, 'train', digit=7, invert=True)
    np.testing.assert_allclose(xi, 1.0 - x, atol=1e-6)
    xr, _ = data.load_ardis(self.tmp, 'train', digit=7, restyle=True)
    self.assertEqual(xr.shape, (3, 28, 28, 1))
    self.assertEqual(max(ink_box(xr[0, ..., 0])), 20)

  def test_auto_invert(self):
    write_ardis(self.tmp, 'train', 255 - self.x, self.y)
    x, _ = data.load_ardis(self.tmp, 'train', digit=None)
    np.testing.assert_allclose(x[..., 0], self.x / 255.0, atol=1e-6)
    kept, _ = data.load_ardis(self.tmp, 'train', digit=None, invert=False)
    np.testing.assert_allclose(kept[..., 0], 1 - self.x / 255.0, atol=1e-6)

  def test_edge_source(self):
    write_ardis(self.tmp, 'train', self.x, self.y)
    xt, yt = fake_ardis(20, seed=1)
    write_ardis(self.tmp, 'test', xt, yt, gz=True)
    source = data.load_edge_source('ardis', data_dir=self.tmp)
    self.assertIsInstance(source, data.EdgeSource)
    self.assertEqual(source.train_x.shape, (3, 28, 28, 1))
    self.assertEqual(source.test_x.shape, (2, 28, 28, 1))
    self.assertEqual(source.name, 'ardis')
    self.assertIn('ARDIS', source.description)

  def test_missing_file(self):
    with self.assertRaises(FileNotFoundError) as cm:
      data.load_ardis(self.tmp, 'train')
    message = str(cm.exception)
    self.assertIn(str(self.tmp / 'ARDIS_train_2828.csv'), message)
    self.assertIn('DATASET_IV', message)
    self.assertIn('ardisdataset.github.io', message)
    self.assertIn('data_dir', message)
    images, _ = write_ardis(self.tmp, 'train', self.x, self.y)
    (self.tmp / 'ARDIS_train_labels.csv').unlink()
    with self.assertRaisesRegex(FileNotFoundError, 'ARDIS_train_labels.csv'):
      data.load_ardis(self.tmp, 'train')
    del images

  def _corrupt(self, lines, which='images'):
    images, labels = write_ardis(self.tmp, 'train', self.x, self.y)
    path = images if which == 'images' else labels
    rows = path.read_text().splitlines()
    for index, text in lines.items():
      rows[index] = text
    path.write_text('\n'.join(rows) + '\n')
    return path

  def test_short_row_named(self):
    short = ','.join(['0'] * 783)
    path = self._corrupt({4: short})
    with self.assertRaisesRegex(ValueError,
                                f'{path}, row 5: 783 values, expected 784'):
      data.load_ardis(self.tmp, 'train')

  def test_non_numeric_named(self):
    path = self._corrupt({2: 'x,' + ','.join(['0'] * 783)})
    with self.assertRaisesRegex(ValueError, f"{path}, row 3: non-numeric "
                                "value 'x'"):
      data.load_ardis(self.tmp, 'train')

  def test_out_of_range_named(self):
    path = self._corrupt({0: '256,' + ','.join(['0'] * 783)})
    with self.assertRaisesRegex(ValueError, f'{path}, row 1: .*0..255'):
      data.load_ardis(self.tmp, 'train')

  def test_bad_one_hot_named(self):
    path = self._corrupt({6: '0,1,0,0,0,0,0,1,0,0'}, which='labels')
    with self.assertRaisesRegex(ValueError, f'{path}, row 7: .*not one-hot'):
      data.load_ardis(self.tmp, 'train')

  def test_mixed_label_format_named(self):
    path = self._corrupt({3: '7'}, which='labels')
    with self.assertRaisesRegex(ValueError, f'{path}, row 4: 1 values'):
      data.load_ardis(self.tmp, 'train')

  def test_bad_integer_label_named(self):
    images, labels = write_ardis(self.tmp, 'train', self.x, self.y,
                                 one_hot=False)
    labels.write_text('\n'.join(['3'] * 29 + ['12']) + '\n')
    with self.assertRaisesRegex(ValueError, f'{labels}, row 30: label 12'):
      data.load_ardis(self.tmp, 'train')
    del images

  def test_label_count_mismatch(self):
    _, labels = write_ardis(self.tmp, 'train', self.x, self.y)
    rows = labels.read_text().splitlines()
    labels.write_text('\n'.join(rows[:-1]) + '\n')
    with self.assertRaisesRegex(ValueError, '29 label rows but .* 30 image'):
      data.load_ardis(self.tmp, 'train')

  def test_bad_split(self):
    with self.assertRaisesRegex(ValueError, "'valid'"):
      data.load_ardis(self.tmp, 'valid')


class EdgeSourceTest(absltest.TestCase):

  def test_uci_source(self):
    source = data.load_edge_source('uci_digits')
    self.assertEqual(source.train_x.shape, (134, 28, 28, 1))
    self.assertEqual(source.test_x.shape, (45, 28, 28, 1))
    np.testing.assert_array_equal(source.train_x, uci('train'))
    self.assertEqual(source.name, 'uci_digits')

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, r"'mnist'.*'uci_digits', 'ardis'"):
      data.load_edge_source('mnist')


class HonestSplitTest(parameterized.TestCase):

  @parameterized.product(n=[1, 7, 10, 66, 660, 1001], p=[1.0, 0.5, 0.1,
                                                          0.35])
  def test_exact_shares(self, n, p):
    expected = int(np.floor(p * n + 0.5 + 1e-9))
    if expected == 0:
      with self.assertRaisesRegex(ValueError, 'rounds to 0'):
        data.honest_edge_split(n, p, seed=0)
      return
    attacker, honest = data.honest_edge_split(n, p, seed=3)
    self.assertLen(attacker, expected)
    self.assertLen(honest, n - expected)
    self.assertEmpty(np.intersect1d(attacker, honest))
    np.testing.assert_array_equal(np.sort(np.concatenate([attacker, honest])),
                                  np.arange(n))
    again = data.honest_edge_split(n, p, seed=3)
    np.testing.assert_array_equal(again[0], attacker)

  def test_rounding(self):
    self.assertLen(data.honest_edge_split(660, 0.1)[0], 66)
    self.assertLen(data.honest_edge_split(5, 0.5)[0], 3)  # Half up.
    self.assertLen(data.honest_edge_split(10, 0.35)[0], 4)  # Not 3.
    self.assertLen(data.honest_edge_split(10, 1.0)[1], 0)

  def test_seeds_differ(self):
    a = data.honest_edge_split(100, 0.5, seed=0)[0]
    b = data.honest_edge_split(100, 0.5, seed=1)[0]
    self.assertFalse(np.array_equal(a, b))

  @parameterized.parameters(0.0, -0.1, 1.5, float('nan'), True, '0.5')
  def test_bad_share(self, p):
    with self.assertRaisesRegex(ValueError, 'attacker_share'):
      data.honest_edge_split(10, p)

  def test_percent_hint(self):
    with self.assertRaisesRegex(ValueError, 'for 50% pass 0.5'):
      data.honest_edge_split(10, 50)

  def test_bad_num_edge(self):
    with self.assertRaisesRegex(ValueError, 'num_edge'):
      data.honest_edge_split(0, 0.5)


class SpreadTest(parameterized.TestCase):

  @parameterized.parameters('round_robin', 'random')
  def test_partition(self, mode):
    _, honest = data.honest_edge_split(660, 0.1, seed=0)
    spread = data.spread_over_clients(honest, [5, 2, 9], seed=1, mode=mode)
    self.assertEqual(list(spread), [5, 2, 9])
    joined = np.concatenate(list(spread.values()))
    np.testing.assert_array_equal(np.sort(joined), honest)
    again = data.spread_over_clients(honest, [5, 2, 9], seed=1, mode=mode)
    for c in spread:
      np.testing.assert_array_equal(spread[c], again[c])

  def test_round_robin_even(self):
    spread = data.spread_over_clients(np.arange(23), 10)
    self.assertEqual(list(spread), list(range(10)))
    self.assertEqual(sorted(len(v) for v in spread.values()),
                     [2] * 7 + [3] * 3)

  def test_more_clients_than_examples(self):
    spread = data.spread_over_clients(np.arange(2), 4)
    self.assertEqual(sum(len(v) for v in spread.values()), 2)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'distinct'):
      data.spread_over_clients(np.arange(4), [1, 1])
    with self.assertRaisesRegex(ValueError, 'clients'):
      data.spread_over_clients(np.arange(4), 0)
    with self.assertRaisesRegex(ValueError, 'repeated'):
      data.spread_over_clients(np.array([1, 1]), 2)
    with self.assertRaisesRegex(ValueError, 'mode'):
      data.spread_over_clients(np.arange(4), 2, mode='even')


if __name__ == '__main__':
  absltest.main()
