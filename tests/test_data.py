"""Tests for fl_jax.data: IDX files, data sources, held-out splits, partitions."""
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fl_jax import data

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / 'data' / 'mnist'
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                      5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@functools.lru_cache(maxsize=None)
def mnist(split):
  """Real MNIST, loaded once per test module."""
  return data.load_dataset('mnist', split)


def toy_dataset(n=8, shape=(2, 2, 1), num_classes=3):
  """x[i] is filled with i / 100, y[i] = i % num_classes."""
  x = np.broadcast_to(
      (np.arange(n, dtype=np.float32) / 100).reshape((n,) + (1,) * len(shape)),
      (n,) + shape).copy()
  y = (np.arange(n) % num_classes).astype(np.int32)
  return data.Dataset(x=x, y=y, num_classes=num_classes, name='toy')


class TempDirTestCase(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, self.tmp)


class IdxTest(TempDirTestCase):

  @parameterized.product(
      dtype=['uint8', 'int8', 'int16', 'int32', 'float32', 'float64'],
      gz=[False, True])
  def test_round_trip(self, dtype, gz):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = self.tmp / ('a.idx' + ('.gz' if gz else ''))
    data.write_idx(path, array)
    out = data.read_idx(path)
    self.assertEqual(out.dtype, np.dtype(dtype))
    self.assertTrue(out.dtype.isnative)
    np.testing.assert_array_equal(out, array)

  def test_header_bytes_by_hand(self):
    path = self.tmp / 'h.idx'
    data.write_idx(path, np.array([[1, 2, 3], [4, 5, 6]], np.uint8))
    self.assertEqual(path.read_bytes(),
                     bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3,
                            1, 2, 3, 4, 5, 6]))
    data.write_idx(path, np.array([258], np.int16))  # 258 = 0x0102.
    self.assertEqual(path.read_bytes(),
                     bytes([0, 0, 0x0B, 1, 0, 0, 0, 1, 1, 2]))

  def test_gzip_detected_from_content_not_name(self):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data.write_idx(self.tmp / 'a.gz', array)
    os.rename(self.tmp / 'a.gz', self.tmp / 'no_suffix')
    np.testing.assert_array_equal(data.read_idx(self.tmp / 'no_suffix'), array)

  def test_truncated_plain_file(self):
    path = self.tmp / 't.idx'
    data.write_idx(path, np.zeros((4, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with self.assertRaisesRegex(ValueError, 'truncated') as cm:
      data.read_idx(path)
    message = str(cm.exception)
    self.assertIn(str(path), message)
    self.assertIn('(4, 5)', message)
    self.assertIn('32 bytes', message)  # 4 + 4 * 2 + 20 expected.
    self.assertIn('31 bytes', message)
    self.assertIn('Re-download', message)

  def test_truncated_gzip_file(self):
    path = self.tmp / 't.idx.gz'
    data.write_idx(path, np.arange(1000, dtype=np.int32))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    with self.assertRaisesRegex(ValueError, 'truncated') as cm:
      data.read_idx(path)
    self.assertIn(str(path), str(cm.exception))

  def test_corrupt_gzip_stream(self):
    path = self.tmp / 'c.gz'
    path.write_bytes(b'\x1f\x8b' + b'\x00' * 40)
    with self.assertRaisesRegex(ValueError, 'gzip') as cm:
      data.read_idx(path)
    self.assertIn(str(path), str(cm.exception))

  @parameterized.named_parameters(
      ('bad_magic', bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), 'magic number'),
      ('bad_dtype', bytes([0, 0, 7, 1, 0, 0, 0, 1, 7]), '0x07'),
      ('zero_dims', bytes([0, 0, 8, 0]), '0 dimensions'),
      ('short_header', bytes([0, 0, 8, 3, 0, 0, 0, 1]), '16-byte header'),
      ('too_short', bytes([0, 0]), '4-byte magic'),
      ('trailing_bytes', bytes([0, 0, 8, 1, 0, 0, 0, 1, 7, 7]), '10 bytes'),
  )
  def test_corrupt_header(self, content, expected):
    path = self.tmp / 'bad.idx'
    path.write_bytes(content)
    with self.assertRaisesRegex(ValueError, expected) as cm:
      data.read_idx(path)
    self.assertIn(str(path), str(cm.exception))

  def test_write_rejects_unsupported(self):
    with self.assertRaisesRegex(ValueError, 'int64'):
      data.write_idx(self.tmp / 'x.idx', np.zeros(3, np.int64))
    with self.assertRaisesRegex(ValueError, r'shape \(\)'):
      data.write_idx(self.tmp / 'x.idx', np.uint8(3))

  def test_real_mnist_label_file(self):
    labels = data.read_idx(MNIST_DIR / 'train-labels-idx1-ubyte.gz')
    self.assertEqual(labels.shape, (60000,))
    self.assertEqual(labels.dtype, np.uint8)
    self.assertEqual(np.bincount(labels).tolist(), MNIST_TRAIN_COUNTS)


class MnistTest(parameterized.TestCase):

  def test_train(self):
    ds = mnist('train')
    self.assertEqual(ds.x.shape, (60000, 28, 28, 1))
    self.assertEqual(ds.x.dtype, np.float32)
    self.assertEqual(ds.y.dtype, np.int32)
    self.assertEqual((ds.num_classes, ds.name), (10, 'mnist'))
    self.assertEqual(float(ds.x.min()), 0.0)
    self.assertEqual(float(ds.x.max()), 1.0)
    self.assertEqual(np.bincount(ds.y).tolist(), MNIST_TRAIN_COUNTS)
    self.assertEqual(ds.y[0], 5)  # The well-known first training digit.
    raw = data.read_idx(MNIST_DIR / 'train-images-idx3-ubyte.gz')
    np.testing.assert_array_equal(ds.x[123, :, :, 0] * 255, raw[123])

  def test_test(self):
    ds = mnist('test')
    self.assertEqual(ds.x.shape, (10000, 28, 28, 1))
    self.assertEqual(np.bincount(ds.y).tolist(), MNIST_TEST_COUNTS)
    self.assertEqual(ds.y[0], 7)
    self.assertTrue(((ds.x >= 0) & (ds.x <= 1)).all())

  def test_data_dir_parent_and_cache_isolation(self):
    # data_dir may name the directory holding <name>/.
    ds = data.load_dataset('mnist', 'test', data_dir=REPO / 'data')
    np.testing.assert_array_equal(ds.y, mnist('test').y)
    # Mutating a returned array must not leak into later loads.
    ds.x[0] = 0.5
    ds.y[0] = 3
    again = data.load_dataset('mnist', 'test')
    self.assertEqual(again.y[0], 7)
    self.assertNotEqual(float(again.x[0].min()), 0.5)


class LocalSourcesTest(TempDirTestCase):

  def test_unknown_name_and_split(self):
    with self.assertRaisesRegex(ValueError, "'fashion'.*mnist, emnist_digits, "
                                'cifar10'):
      data.load_dataset('fashion')
    with self.assertRaisesRegex(ValueError, "'validation'.*train, test"):
      data.load_dataset('mnist', 'validation')

  def test_missing_data_dir(self):
    missing = self.tmp / 'nowhere'
    with self.assertRaises(data.DataNotFoundError) as cm:
      data.load_dataset('mnist', data_dir=missing)
    message = str(cm.exception)
    for expected in [str(missing), str(missing / 'mnist'),
                     'train-images-idx3-ubyte[.gz]', 'mnist_train.npz',
                     '--data_dir', 'download_and_prepare', 'tfds-prepare']:
      self.assertIn(expected, message)
    self.assertIsInstance(cm.exception, FileNotFoundError)

  def test_idx_partner_missing(self):
    shutil.copy(MNIST_DIR / 't10k-labels-idx1-ubyte.gz', self.tmp)
    with self.assertRaisesRegex(data.DataNotFoundError,
                                't10k-images-idx3-ubyte'):
      data.load_dataset('mnist', 'test', data_dir=self.tmp)

  def test_corrupt_local_file_names_path(self):
    shutil.copy(MNIST_DIR / 't10k-labels-idx1-ubyte.gz', self.tmp)
    images = self.tmp / 't10k-images-idx3-ubyte.gz'
    raw = (MNIST_DIR / 't10k-images-idx3-ubyte.gz').read_bytes()
    images.write_bytes(raw[:len(raw) - 1000])
    with self.assertRaises(ValueError) as cm:
      data.load_dataset('mnist', 'test', data_dir=self.tmp)
    self.assertIn(str(images), str(cm.exception))

  def test_plain_idx_files_accepted(self):
    x = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    data.write_idx(self.tmp / 'train-images-idx3-ubyte', x)
    data.write_idx(self.tmp / 'train-labels-idx1-ubyte',
                   np.array([1, 2, 9], np.uint8))
    ds = data.load_dataset('mnist', data_dir=self.tmp)
    np.testing.assert_array_equal(ds.y, [1, 2, 9])
    np.testing.assert_allclose(ds.x[..., 0], x / 255.0, rtol=1e-6)

  def test_emnist_idx_is_transposed_upright(self):
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), np.uint8)
    data.write_idx(self.tmp / 'emnist-digits-test-images-idx3-ubyte.gz', x)
    data.write_idx(self.tmp / 'emnist-digits-test-labels-idx1-ubyte.gz',
                   np.array([0, 3, 9, 3], np.uint8))
    ds = data.load_dataset('emnist_digits', 'test', data_dir=self.tmp)
    self.assertEqual(ds.x.shape, (4, 28, 28, 1))
    np.testing.assert_allclose(ds.x[..., 0] * 255,
                               np.transpose(x, (0, 2, 1)), atol=1e-4)
    np.testing.assert_array_equal(ds.y, [0, 3, 9, 3])

  def test_npz_uint8_greyscale(self):
    x = np.random.default_rng(1).integers(0, 256, (5, 28, 28), np.uint8)
    y = np.array([0, 1, 2, 3, 9])
    np.savez(self.tmp / 'mnist_test.npz', x=x, y=y)
    ds = data.load_dataset('mnist', 'test', data_dir=self.tmp)
    self.assertEqual(ds.x.shape, (5, 28, 28, 1))
    self.assertEqual((ds.x.dtype, ds.y.dtype), (np.float32, np.int32))
    np.testing.assert_allclose(ds.x[..., 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, y)

  def test_npz_float_rgb_in_subdirectory(self):
    (self.tmp / 'cifar10').mkdir()
    x = np.random.default_rng(2).uniform(size=(3, 32, 32, 3))
    np.savez(self.tmp / 'cifar10' / 'cifar10_train.npz', x=x,
             y=np.array([4, 0, 7], np.uint8))
    ds = data.load_dataset('cifar10', data_dir=self.tmp)
    self.assertEqual(ds.x.shape, (3, 32, 32, 3))
    np.testing.assert_allclose(ds.x, x.astype(np.float32))
    np.testing.assert_array_equal(ds.y, [4, 0, 7])

  @parameterized.named_parameters(
      ('label_range', np.zeros((2, 28, 28), np.uint8), np.array([0, 10]),
       r'\[0, 10\].*\[0, 9\]'),
      ('image_shape', np.zeros((2, 32, 32), np.uint8), np.array([0, 1]),
       r'\(2, 32, 32, 1\)'),
      ('length', np.zeros((2, 28, 28), np.uint8), np.array([0, 1, 2]),
       r'\(3,\)'),
      ('float_range', np.full((2, 28, 28), 255.0), np.array([0, 1]),
       'divide by 255'),
  )
  def test_bad_npz(self, x, y, expected):
    np.savez(self.tmp / 'mnist_train.npz', x=x, y=y)
    with self.assertRaisesRegex(ValueError, expected) as cm:
      data.load_dataset('mnist', data_dir=self.tmp)
    self.assertIn('mnist_train.npz', str(cm.exception))

  def test_npz_missing_array(self):
    np.savez(self.tmp / 'mnist_train.npz', images=np.zeros((1, 28, 28)))
    with self.assertRaisesRegex(ValueError, r"\['x', 'y'\]"):
      data.load_dataset('mnist', data_dir=self.tmp)

  def test_import_is_lazy(self):
    code = ('import sys, fl_jax.data; '
            'sys.exit(int("tensorflow_datasets" in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                            capture_output=True, text=True, check=False)
    self.assertEqual(result.returncode, 0, result.stderr)


class TfdsSourceTest(TempDirTestCase):
  """The TFDS path under tfds.testing.mock_data (never downloads).

  mock_data replaces the array-record reader by random examples with the
  real feature specs; nothing needs TensorFlow (which is not installed).
  """

  def setUp(self):
    super().setUp()
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError:
      self.skipTest('tensorflow-datasets is not installed')
    self.tfds = tfds
    self.enterContext(tfds.testing.mock_data(
        num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE))

  def test_cifar10(self):
    ds = data.load_dataset('cifar10', 'test', data_dir=self.tmp)
    self.assertEqual(ds.x.shape, (12, 32, 32, 3))
    self.assertEqual((ds.x.dtype, ds.y.dtype), (np.float32, np.int32))
    self.assertEqual((ds.num_classes, ds.name), (10, 'cifar10'))
    self.assertTrue(((ds.x >= 0) & (ds.x <= 1)).all())
    self.assertGreater(float(ds.x.max()), 0.5)  # Scaled by 1/255, not more.
    self.assertTrue(((ds.y >= 0) & (ds.y < 10)).all())
    source = self.tfds.data_source('cifar10', split='test')
    np.testing.assert_allclose(ds.x[5] * 255, source[5]['image'], atol=1e-4)
    self.assertEqual(ds.y[5], source[5]['label'])

  def test_mnist_through_tfds_when_no_local_files(self):
    ds = data.load_dataset('mnist', 'test', data_dir=self.tmp)
    self.assertEqual(ds.x.shape, (12, 28, 28, 1))
    source = self.tfds.data_source('mnist', split='test')
    np.testing.assert_allclose(ds.x[2] * 255, source[2]['image'], atol=1e-4)

  def test_emnist_digits_transposed(self):
    ds = data.load_dataset('emnist_digits', 'train', data_dir=self.tmp)
    self.assertEqual(ds.x.shape, (12, 28, 28, 1))
    source = self.tfds.data_source('emnist/digits', split='train')
    for i in (0, 7):
      np.testing.assert_allclose(ds.x[i, :, :, 0] * 255,
                                 source[i]['image'][:, :, 0].T, atol=1e-4)
      self.assertEqual(ds.y[i], source[i]['label'])

  def test_download_runs_download_and_prepare(self):
    builder_cls = self.tfds.core.DatasetBuilder
    with mock.patch.object(builder_cls, 'download_and_prepare',
                           autospec=True) as prepare:
      ds = data.load_dataset('cifar10', data_dir=self.tmp, download=True)
    prepare.assert_called_once()
    self.assertEqual(prepare.call_args.kwargs, {'file_format': 'array_record'})
    self.assertEqual(ds.x.shape, (12, 32, 32, 3))

  def test_offline_without_prepared_copy_gives_how_to_get_the_data(self):
    # What TFDS raises offline when only the metadata of the data set is known.
    empty = KeyError("Trying to access `splits['train']` but `splits` is empty. This "
                     'likely indicates the dataset has not been generated yet.')
    for name, tfds_name in (('cifar10', 'cifar10'), ('emnist_digits', 'emnist/digits')):
      with self.subTest(name), mock.patch.object(self.tfds, 'data_source',
                                                 side_effect=empty) as source:
        with self.assertRaises(data.DataNotFoundError) as cm:
          data.load_dataset(name, 'train', data_dir=self.tmp)
        source.assert_called_once()
        message = str(cm.exception)
        for expected in (f"no prepared array-record copy of '{tfds_name}'", '`splits` is empty',
                         '--data_dir', 'download_and_prepare', 'tfds-prepare'):
          self.assertIn(expected, message)

  def test_local_files_win_over_tfds(self):
    np.savez(self.tmp / 'cifar10_test.npz', x=np.zeros((2, 32, 32, 3),
                                                        np.uint8), y=[1, 2])
    ds = data.load_dataset('cifar10', 'test', data_dir=self.tmp)
    self.assertEqual(ds.x.shape, (2, 32, 32, 3))


class HoldoutSplitTest(parameterized.TestCase):

  def test_toy(self):
    ds = toy_dataset(10)
    cert, val, rest = data.holdout_split(ds, 3, 4)
    np.testing.assert_allclose(cert.x[:, 0, 0, 0], [0.0, 0.01, 0.02])
    np.testing.assert_allclose(val.x[:, 0, 0, 0], [0.03, 0.04, 0.05, 0.06])
    np.testing.assert_allclose(rest.x[:, 0, 0, 0], [0.07, 0.08, 0.09])
    np.testing.assert_array_equal(rest.y, [1, 2, 0])
    self.assertEqual((rest.num_classes, rest.name), (3, 'toy'))

  def test_mnist_paper_sizes(self):
    ds = mnist('train')
    cert, val, rest = data.holdout_split(ds, 1000, 5000)
    self.assertEqual((len(cert.y), len(val.y), len(rest.y)),
                     (1000, 5000, 54000))
    np.testing.assert_array_equal(cert.x, ds.x[:1000])
    np.testing.assert_array_equal(val.y, ds.y[1000:6000])
    np.testing.assert_array_equal(rest.y, ds.y[6000:])

  def test_zero_sizes(self):
    cert, val, rest = data.holdout_split(toy_dataset(4), 0, 0)
    self.assertEqual((len(cert.y), len(val.y), len(rest.y)), (0, 0, 4))

  @parameterized.named_parameters(
      ('neg_cert', -1, 2, 'num_cert must be non-negative, got -1'),
      ('neg_val', 1, -5, 'num_val must be non-negative, got -5'),
      ('too_many', 6, 5, r'6 \+ 5 = 11 exceeds the 10 examples'),
      ('float', 1.5, 2, 'num_cert must be an integer, got 1.5'),
  )
  def test_bad_sizes(self, num_cert, num_val, expected):
    with self.assertRaisesRegex(ValueError, expected):
      data.holdout_split(toy_dataset(10), num_cert, num_val)


def assert_is_partition(test, parts, n):
  test.assertTrue(all(p.dtype == np.int64 for p in parts))
  test.assertTrue(all((np.diff(p) > 0).all() for p in parts))  # Sorted.
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


class PartitionIidTest(parameterized.TestCase):

  @parameterized.parameters((10, 3), (54000, 500), (7, 7), (5, 1))
  def test_partition_and_sizes(self, n, k):
    parts = data.partition_iid(n, k, seed=0)
    self.assertLen(parts, k)
    assert_is_partition(self, parts, n)
    sizes = [len(p) for p in parts]
    self.assertLessEqual(max(sizes) - min(sizes), 1)
    self.assertEqual(min(sizes), n // k)

  def test_seeded(self):
    a = data.partition_iid(100, 4, seed=3)
    b = data.partition_iid(100, 4, seed=3)
    c = data.partition_iid(100, 4, seed=4)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    self.assertFalse(all(np.array_equal(x, y) for x, y in zip(a, c)))

  @parameterized.named_parameters(
      ('zero_clients', 10, 0, 'num_clients must be positive, got 0'),
      ('neg_clients', 10, -2, 'num_clients must be positive, got -2'),
      ('too_many', 3, 4, 'num_clients = 4 exceeds the number of examples '
       r'\(3\)'),
      ('no_examples', 0, 1, 'num_examples must be positive, got 0'),
      ('float_clients', 10, 2.0, 'num_clients must be an integer, got 2.0'),
  )
  def test_bad_inputs(self, n, k, expected):
    with self.assertRaisesRegex(ValueError, expected):
      data.partition_iid(n, k, seed=0)


def mean_label_entropy(labels, parts, num_classes):
  counts = np.stack([np.bincount(labels[p], minlength=num_classes)
                     for p in parts]).astype(np.float64)
  p = counts / counts.sum(axis=1, keepdims=True)
  logs = np.log(np.where(p > 0, p, 1.0))
  return float(-(p * logs).sum(axis=1).mean())


class PartitionDirichletTest(parameterized.TestCase):

  def test_mnist_clients(self):
    labels = data.holdout_split(mnist('train'), 1000, 5000)[2].y
    parts = data.partition_dirichlet(labels, 100, 0.5, seed=0, min_size=10)
    self.assertLen(parts, 100)
    assert_is_partition(self, parts, 54000)
    self.assertGreaterEqual(min(len(p) for p in parts), 10)
    again = data.partition_dirichlet(labels, 100, 0.5, seed=0, min_size=10)
    for x, y in zip(parts, again):
      np.testing.assert_array_equal(x, y)

  def test_min_size_respected_when_tight(self):
    labels = np.repeat(np.arange(4), 50)  # 200 examples.
    parts = data.partition_dirichlet(labels, 10, 1.0, seed=1, min_size=12,
                                     max_tries=1000)
    assert_is_partition(self, parts, 200)
    self.assertGreaterEqual(min(len(p) for p in parts), 12)

  def test_skew_grows_as_alpha_shrinks(self):
    labels = np.repeat(np.arange(10), 500)
    entropy = {
        alpha: np.mean([
            mean_label_entropy(
                labels, data.partition_dirichlet(labels, 20, alpha, seed),
                10) for seed in range(3)])
        for alpha in (0.1, 0.5, 100.0)
    }
    # Near-uniform class mix at alpha = 100 (log 10 = 2.303), few classes per
    # client at alpha = 0.1.
    self.assertGreater(entropy[100.0], 2.25)
    self.assertLess(entropy[0.1], 1.3)
    self.assertLess(entropy[0.1], entropy[0.5])
    self.assertLess(entropy[0.5], entropy[100.0])

  def test_single_class_labels(self):
    parts = data.partition_dirichlet(np.full(50, 3), 5, 0.5, seed=0,
                                     min_size=2)
    assert_is_partition(self, parts, 50)

  @parameterized.named_parameters(
      ('alpha_zero', dict(alpha=0.0), 'alpha must be a positive finite '
       'number, got 0.0'),
      ('alpha_neg', dict(alpha=-1.0), 'got -1.0'),
      ('alpha_nan', dict(alpha=float('nan')), 'got nan'),
      ('zero_clients', dict(num_clients=0), 'num_clients must be positive, '
       'got 0'),
      ('too_many_clients', dict(num_clients=101), 'num_clients = 101 exceeds'),
      ('impossible', dict(num_clients=20, min_size=6),
       r'num_clients \* min_size = 20 \* 6 = 120 exceeds the 100 examples'),
      ('neg_min_size', dict(min_size=-1), 'min_size must be non-negative, '
       'got -1'),
      ('tries', dict(max_tries=0), 'max_tries must be positive, got 0'),
      ('float_labels', dict(labels=np.zeros(100)), 'integer array'),
      ('neg_labels', dict(labels=-np.ones(100, np.int64)),
       'non-negative, got -1'),
  )
  def test_bad_inputs(self, overrides, expected):
    kwargs = dict(labels=np.arange(100) % 10, num_clients=5, alpha=0.5,
                  seed=0, min_size=1)
    kwargs.update(overrides)
    with self.assertRaisesRegex(ValueError, expected):
      data.partition_dirichlet(**kwargs)

  def test_gives_up_after_max_tries(self):
    labels = np.repeat(np.arange(10), 10)
    # Feasible on paper (50 * 2 = 100) but a skewed draw essentially never
    # gives every client exactly two examples.
    with self.assertRaisesRegex(
        ValueError, r'alpha = 0.05.*num_clients = 50.*min_size = 2.*'
        r'max_tries = 3'):
      data.partition_dirichlet(labels, 50, 0.05, seed=0, min_size=2,
                               max_tries=3)


class PadClientsTest(parameterized.TestCase):

  def test_hand_checked(self):
    ds = toy_dataset(6)
    cd = data.pad_clients(ds, [np.array([4, 1]), np.array([0, 2, 5]),
                               np.array([], np.int64)])
    self.assertEqual(cd.x.shape, (3, 3, 2, 2, 1))
    self.assertEqual((cd.x.dtype, cd.y.dtype, cd.mask.dtype,
                      cd.num_examples.dtype),
                     (np.float32, np.int32, np.bool_, np.int32))
    np.testing.assert_array_equal(cd.num_examples, [2, 3, 0])
    np.testing.assert_array_equal(
        cd.mask, [[True, True, False], [True, True, True],
                  [False, False, False]])
    np.testing.assert_allclose(cd.x[..., 0, 0, 0],
                               [[0.04, 0.01, 0.0], [0.0, 0.02, 0.05],
                                [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(cd.y, [[1, 1, 0], [0, 2, 2], [0, 0, 0]])

  def test_explicit_n_max_pads_with_zeros(self):
    ds = toy_dataset(6)
    ds = ds._replace(x=ds.x + 1.0, y=ds.y + 1)  # No real zeros.
    cd = data.pad_clients(ds, [np.array([0, 1]), np.array([2])], n_max=5)
    self.assertEqual(cd.x.shape, (2, 5, 2, 2, 1))
    np.testing.assert_array_equal(cd.mask.sum(axis=1), cd.num_examples)
    self.assertTrue((cd.x[~cd.mask] == 0).all())
    self.assertTrue((cd.y[~cd.mask] == 0).all())
    self.assertTrue((cd.x[cd.mask] >= 1).all())

  @parameterized.named_parameters(
      ('n_max_small', [[0, 1, 2], [3]], 2,
       'n_max = 2 is smaller than client 0, which has 3'),
      ('n_max_zero', [[]], 0, 'n_max = 0'),
      ('index_range', [[0, 6]], None, r'index_lists\[0\].*\[0, 6\], outside '
       r'\[0, 6\)'),
      ('negative_index', [[1], [-1]], None, r'index_lists\[1\]'),
      ('float_index', [[0.0]], None, 'integer array'),
      ('no_clients', [], None, 'index_lists is empty'),
  )
  def test_bad_inputs(self, lists, n_max, expected):
    with self.assertRaisesRegex(ValueError, expected):
      data.pad_clients(toy_dataset(6), [np.asarray(i) for i in lists],
                       n_max=n_max)

  def test_make_federated_mnist_iid(self):
    rest = data.holdout_split(mnist('train'), 1000, 5000)[2]
    cd = data.make_federated(rest, 500, 'iid', seed=0)
    self.assertEqual(cd.x.shape, (500, 108, 28, 28, 1))
    self.assertEqual(int(cd.mask.sum()), 54000)
    np.testing.assert_array_equal(cd.mask.sum(axis=1), cd.num_examples)
    hist = data.label_histogram(cd, 10)
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(rest.y))
    np.testing.assert_array_equal(hist.sum(axis=1), cd.num_examples)
    # Each real slot holds the image of its label: compare pixel sums.
    np.testing.assert_allclose(cd.x[cd.mask].sum(), rest.x.sum(), rtol=1e-5)

  def test_make_federated_dirichlet(self):
    ds = toy_dataset(60, num_classes=4)
    cd = data.make_federated(ds, 4, 'dirichlet', alpha=1.0, seed=2,
                             min_size=5)
    self.assertGreaterEqual(int(cd.num_examples.min()), 5)
    self.assertEqual(int(cd.num_examples.sum()), 60)
    # Every example appears once: x[i] = i / 100 identifies it.
    ids = np.round(cd.x[cd.mask][:, 0, 0, 0] * 100).astype(int)
    np.testing.assert_array_equal(np.sort(ids), np.arange(60))

  def test_make_federated_bad_partition(self):
    with self.assertRaisesRegex(ValueError, "'shards'.*'iid', 'dirichlet'"):
      data.make_federated(toy_dataset(6), 2, 'shards')


class LabelHistogramTest(parameterized.TestCase):

  def test_hand_checked(self):
    cd = data.ClientData(
        x=np.zeros((2, 4, 1, 1, 1), np.float32),
        y=np.array([[0, 1, 1, 2], [2, 2, 0, 0]], np.int32),
        mask=np.array([[True, True, True, False], [True, False, False, False]]),
        num_examples=np.array([3, 1], np.int32))
    np.testing.assert_array_equal(data.label_histogram(cd, 3),
                                  [[1, 2, 0], [0, 0, 1]])
    np.testing.assert_array_equal(data.label_histogram(cd, 4),
                                  [[1, 2, 0, 0], [0, 0, 1, 0]])

  def test_bad_inputs(self):
    cd = data.ClientData(x=np.zeros((1, 2, 1, 1, 1)), y=np.array([[0, 5]]),
                         mask=np.array([[True, True]]),
                         num_examples=np.array([2]))
    with self.assertRaisesRegex(ValueError, r'\[0, 5\], outside \[0, 3\)'):
      data.label_histogram(cd, 3)
    with self.assertRaisesRegex(ValueError, 'positive integer, got 0'):
      data.label_histogram(cd, 0)
    # A masked-out bad label is ignored.
    cd = cd._replace(mask=np.array([[True, False]]))
    np.testing.assert_array_equal(data.label_histogram(cd, 3), [[1, 0, 0]])


if __name__ == '__main__':
  absltest.main()
