"""Image classification data sets as NumPy arrays: local files first, then TFDS.

``load_dataset(name, split)`` looks for the data in this order:

1. Local files in ``data_dir`` or ``data_dir/<name>`` (default directory:
   ``<repo>/data/<name>``, so the MNIST files shipped in ``data/mnist`` make
   the library work offline):

   * the standard gzipped (or plain) IDX files for ``mnist``
     (``train-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``, ...) and
     ``emnist_digits`` (``emnist-digits-train-images-idx3-ubyte.gz``, ...);
   * for any data set, ``<name>_<split>.npz`` holding arrays ``x`` and ``y``.

2. A prepared tensorflow-datasets copy, read with ``tfds.data_source``
   (array-record files, read without TensorFlow; decoding PNG-encoded images
   needs Pillow or OpenCV).

3. Otherwise a ``DataNotFoundError`` saying what was looked for where and how
   to provide it. ``download=True`` first runs TFDS
   ``download_and_prepare``, which needs internet and TensorFlow
   (``pip install 'fl_jax[tfds-prepare]'``).

Everything runs on the host, once, before training.
"""
import functools
import os
from pathlib import Path
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

from fl_jax.data import idx

PathLike = Union[str, os.PathLike]

SPLITS = ('train', 'test')
_REPO_DATA_DIR = Path(__file__).resolve().parents[2] / 'data'


class Dataset(NamedTuple):
  """An in-memory image classification split.

  Attributes:
    x: images, float32 ``[N, H, W, C]`` with values in ``[0, 1]`` (NHWC).
    y: labels, int32 ``[N]`` in ``[0, num_classes)``.
    num_classes: number of classes.
    name: the data set name (e.g. ``'mnist'``).
  """
  x: np.ndarray
  y: np.ndarray
  num_classes: int
  name: str


class DataNotFoundError(FileNotFoundError):
  """No local files and no prepared TFDS copy of a data set were found."""


class _Spec(NamedTuple):
  tfds_name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  # split -> (images file, labels file) IDX names; empty if no IDX release.
  idx_files: dict
  # The raw EMNIST images are stored transposed (H and W swapped).
  transpose: bool


_SPECS = {
    'mnist': _Spec(
        'mnist', 10, (28, 28, 1),
        {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')},
        transpose=False),
    'emnist_digits': _Spec(
        'emnist/digits', 10, (28, 28, 1),
        {'train': ('emnist-digits-train-images-idx3-ubyte',
                   'emnist-digits-train-labels-idx1-ubyte'),
         'test': ('emnist-digits-test-images-idx3-ubyte',
                  'emnist-digits-test-labels-idx1-ubyte')},
        transpose=True),
    'cifar10': _Spec('cifar10', 10, (32, 32, 3), {}, transpose=False),
}
DATASET_NAMES = tuple(_SPECS)


def dataset_info(name: str) -> Tuple[Tuple[int, int, int], int]:
  """``(image_shape HWC, num_classes)`` of a known data set, without loading it."""
  if name not in _SPECS:
    raise ValueError(f'unknown data set {name!r}; expected one of {DATASET_NAMES}')
  return _SPECS[name].image_shape, _SPECS[name].num_classes


def _to_dataset(name: str, spec: _Spec, x: np.ndarray, y: np.ndarray,
                source: str) -> Dataset:
  """Validates raw arrays and converts them to a float32 NHWC ``Dataset``."""
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim == 3 and spec.image_shape[-1] == 1:
    x = x[..., None]
  if x.shape[1:] != spec.image_shape:
    raise ValueError(f'{source}: images have shape {x.shape}, expected '
                     f'[N, {", ".join(map(str, spec.image_shape))}] for '
                     f'{name!r}.')
  if y.ndim != 1 or len(y) != len(x):
    raise ValueError(f'{source}: labels have shape {y.shape}, expected [N] '
                     f'with N = {len(x)} (the number of images).')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{source}: labels have dtype {y.dtype}, expected '
                     'integers.')
  if len(y) and (y.min() < 0 or y.max() >= spec.num_classes):
    raise ValueError(f'{source}: labels span [{y.min()}, {y.max()}], expected '
                     f'[0, {spec.num_classes - 1}] for {name!r}.')
  if x.dtype == np.uint8:
    x = x.astype(np.float32)
    x /= np.float32(255.0)  # In place: one 4-byte copy of the images.
  elif np.issubdtype(x.dtype, np.floating):
    if len(x) and (x.min() < 0.0 or x.max() > 1.0):
      raise ValueError(f'{source}: float images span [{x.min()}, {x.max()}], '
                       'expected [0, 1] (store uint8 pixels or divide by '
                       '255).')
    x = x.astype(np.float32)
  else:
    raise ValueError(f'{source}: images have dtype {x.dtype}, expected uint8 '
                     'or float in [0, 1].')
  return Dataset(x=x, y=y.astype(np.int32), num_classes=spec.num_classes,
                 name=name)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
  """``read_idx`` cached per (path, modification time, size); read-only."""
  del mtime_ns, size  # Only part of the cache key.
  array = idx.read_idx(path)
  array.flags.writeable = False
  return array


def _read_idx_file(path: Path) -> np.ndarray:
  stat = path.stat()
  return _read_idx_cached(str(path), stat.st_mtime_ns, stat.st_size)


def _find(directory: Path, stem: str) -> Optional[Path]:
  for candidate in (directory / (stem + '.gz'), directory / stem):
    if candidate.is_file():
      return candidate
  return None


def _load_local(name: str, spec: _Spec, split: str,
                directories) -> Optional[Dataset]:
  """Loads from the first directory holding IDX or npz files, else None."""
  for directory in directories:
    if spec.idx_files:
      images_stem, labels_stem = spec.idx_files[split]
      images, labels = _find(directory, images_stem), _find(directory,
                                                            labels_stem)
      if images is not None and labels is not None:
        x = _read_idx_file(images)
        y = _read_idx_file(labels)
        if spec.transpose:
          x = np.swapaxes(x, 1, 2)
        return _to_dataset(name, spec, x, y, f'{images} + {labels}')
      if (images is None) != (labels is None):
        found, missing = ((images, labels_stem) if labels is None
                          else (labels, images_stem))
        raise DataNotFoundError(
            f'Found {found} but not its partner {missing}[.gz] in '
            f'{directory}. Put both IDX files of the {split!r} split there.')
    npz = directory / f'{name}_{split}.npz'
    if npz.is_file():
      with np.load(npz) as arrays:
        missing = {'x', 'y'} - set(arrays.files)
        if missing:
          raise ValueError(f'{npz} lacks array(s) {sorted(missing)}; it must '
                           'hold x [N, H, W(, C)] and y [N].')
        x, y = arrays['x'], arrays['y']
      return _to_dataset(name, spec, x, y, str(npz))
  return None


def _local_hint(name: str, spec: _Spec, split: str) -> str:
  names = [f'{name}_{split}.npz (arrays x, y)']
  if spec.idx_files:
    names = [f'{s}[.gz]' for s in spec.idx_files[split]] + names
  return ', '.join(names)


def _load_tfds(name: str, spec: _Spec, split: str,
               data_dir: Optional[Path], download: bool):
  """Reads a prepared TFDS copy; returns (Dataset or None, reason)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, 'tensorflow-datasets is not installed'
  data_dir_arg = None if data_dir is None else str(data_dir)
  if download:
    try:
      builder = tfds.builder(spec.tfds_name, data_dir=data_dir_arg,
                             file_format='array_record')
      builder.download_and_prepare(file_format='array_record')
    except ImportError as e:
      raise ImportError(
          f'Preparing {spec.tfds_name!r} with TFDS needs TensorFlow and '
          f"internet access ({e}). Install it with `pip install "
          f"'fl_jax[tfds-prepare]'` (or `pip install tensorflow pillow`), or "
          f'provide local files instead.') from e
  try:
    source = tfds.data_source(spec.tfds_name, split=split,
                              data_dir=data_dir_arg, download=False)
  except (NotImplementedError, FileNotFoundError, AssertionError,
          ValueError, KeyError) as e:
    # KeyError: TFDS found the data set's metadata but no generated splits
    # ("`splits` is empty"), which is what an offline machine without a
    # prepared copy gets.
    where = data_dir_arg or 'the default TFDS data_dir (TFDS_DATA_DIR or '\
        '~/tensorflow_datasets)'
    reason = (f'no prepared array-record copy of {spec.tfds_name!r} in '
              f'{where}')
    if not isinstance(e, NotImplementedError):  # Not "no array-record files".
      lines = str(e).strip().splitlines()
      reason += f' ({type(e).__name__}: {lines[0] if lines else ""})'
    return None, reason
  n = len(source)
  try:
    records = [source[i] for i in range(n)]
  except ImportError as e:
    raise ImportError(
        f'Decoding TFDS {spec.tfds_name!r} images without TensorFlow needs '
        f'Pillow or OpenCV ({e}): `pip install pillow`.') from e
  x = np.stack([np.asarray(r['image']) for r in records]) if n else np.zeros(
      (0,) + spec.image_shape, np.uint8)
  y = np.asarray([r['label'] for r in records], np.int64)
  if spec.transpose:
    x = np.swapaxes(x, 1, 2)
  return _to_dataset(name, spec, x, y, f'TFDS {spec.tfds_name}[{split}]'), ''


def load_dataset(name: str, split: str = 'train',
                 data_dir: Optional[PathLike] = None,
                 download: bool = False) -> Dataset:
  """Loads one split of an image classification data set into memory.

  Images become float32 in ``[0, 1]`` (``uint8 / 255``), NHWC, with a
  channel axis added for greyscale; labels become int32. EMNIST's IDX and
  TFDS images are stored transposed; they are swapped back (H <-> W) so that
  digits are upright as in MNIST (``.npz`` files are used as they are).

  Args:
    name: one of ``'mnist'``, ``'emnist_digits'``, ``'cifar10'``.
    split: ``'train'`` or ``'test'``.
    data_dir: directory searched for local files (itself, then
      ``data_dir/<name>``) and passed to TFDS as its ``data_dir``. Default:
      ``<repo>/data/<name>`` for local files, TFDS's own default for TFDS.
    download: if True and no local files are found, first run TFDS
      ``download_and_prepare`` (needs TensorFlow and internet:
      ``pip install 'fl_jax[tfds-prepare]'``).

  Returns:
    A ``Dataset(x[N, H, W, C] float32, y[N] int32, num_classes, name)``.
    MNIST: 60000 / 10000 images of 28x28x1; CIFAR-10: 50000 / 10000 of
    32x32x3; EMNIST digits: 240000 / 40000 of 28x28x1 (750 MB as float32).

  Raises:
    ValueError: unknown ``name`` or ``split``; corrupt local files.
    DataNotFoundError: nothing found locally or in TFDS; the message lists
      the places searched and how to provide the data.
  """
  if name not in _SPECS:
    raise ValueError(f'Unknown data set name {name!r}; valid names: '
                     f'{", ".join(DATASET_NAMES)}.')
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; valid splits: '
                     f'{", ".join(SPLITS)}.')
  spec = _SPECS[name]
  if data_dir is None:
    directories = [_REPO_DATA_DIR / name]
    tfds_dir = None
  else:
    data_dir = Path(data_dir).expanduser()
    directories = [data_dir, data_dir / name]
    tfds_dir = data_dir

  ds = _load_local(name, spec, split, directories)
  if ds is not None:
    return ds
  ds, reason = _load_tfds(name, spec, split, tfds_dir, download)
  if ds is not None:
    return ds
  searched = ', '.join(str(d) for d in directories)
  raise DataNotFoundError(
      f'Data set {name!r} (split {split!r}) not found.\n'
      f'  Local files looked for: {_local_hint(name, spec, split)} in '
      f'{searched}.\n'
      f'  TFDS: {reason}.\n'
      f'To provide it, either put those files in a directory and pass it as '
      f'data_dir (--data_dir), or prepare the TFDS copy once with internet: '
      f"`pip install 'fl_jax[tfds-prepare]'` (TensorFlow), then "
      f"`tfds.builder('{spec.tfds_name}', data_dir=..., "
      f"file_format='array_record').download_and_prepare()` or "
      f'load_dataset(..., download=True).')
