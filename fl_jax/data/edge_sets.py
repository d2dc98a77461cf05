"""Edge-case digit sets for MNIST/EMNIST backdoors, in MNIST's image format.

"Attack of the Tails" (Wang et al., NeurIPS 2020), Task 2, backdoors a digit
classifier with 7s written in a style the federation never sees, labelled
"1": 7s from ARDIS DATASET_IV (Swedish church records, 19th-20th century).
The attacker draws 66 of the 660 ARDIS training 7s; the target task is the
7s among the 1000 ARDIS test images. Figure 5 then hands part of the edge
examples to honest clients, correctly labelled.

This module provides, host-side in NumPy:

* :func:`mnist_style`: any greyscale digits -> MNIST's format (ink cropped,
  longer side resized to 20 px with anti-aliasing, pasted in a 28x28 field
  with the centre of mass at its centre).
* :func:`load_uci_digits`: the UCI optical-recognition digits that
  scikit-learn ships inside its wheel (1797 images of 8x8, 43 writers), an
  offline stand-in for ARDIS. scikit-learn is a dependency for that reason
  (and because its ``GaussianMixture`` can fit the penultimate-feature
  density of the paper's Figure 2).
* :func:`load_ardis`: reader for the ARDIS DATASET_IV CSV files, which users
  download themselves.
* :func:`load_edge_source`: either source as train (attacker pool) and test
  (target task) images.
* :func:`honest_edge_split`, :func:`spread_over_clients`: the Figure 5
  split of edge examples between the attacker and honest clients.

References:
  H. Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor
  Federated Learning", NeurIPS 2020, Section 4 and Appendix (Task 2).
  H. Kusetogullari et al., "ARDIS: a Swedish historical handwritten digit
  dataset", Neural Computing and Applications, 2019.
  Y. LeCun et al., THE MNIST DATABASE (size normalisation to a 20x20 box,
  centring by centre of mass in a 28x28 field).
  E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI
  Machine Learning Repository, 1998.
"""
import gzip
import math
import numbers
import os
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]

EDGE_SOURCE_NAMES = ('uci_digits', 'ardis')
_REPO_ARDIS_DIR = Path(__file__).resolve().parents[2] / 'data' / 'ardis'
_ARDIS_URL = 'https://ardisdataset.github.io/ARDIS/'
_ARDIS_PIXELS = 28 * 28
_NUM_CLASSES = 10


# ----------------------------------------------------------------------------
# MNIST-style normalisation.
# ----------------------------------------------------------------------------


def _round_half_up(x) -> int:
  """``floor(x + 0.5)`` as an int (no banker's rounding)."""
  return int(math.floor(x + 0.5))


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Anti-aliased linear resampling along one axis, as a matrix.

  Pixel ``j`` of the input covers ``[j, j + 1)``; output pixel ``i`` has its
  centre at ``c_i = (i + 0.5) * s`` in input coordinates, ``s = n_in / n_out``.
  Its value is a weighted mean of the input pixels with a triangle (tent)
  kernel of half-width ``r = max(s, 1)``:

    W[i, j] ∝ max(0, 1 - |j + 0.5 - c_i| / r),   rows normalised to sum 1.

  For ``s <= 1`` (enlarging) this is bilinear interpolation with clamped
  borders; for ``s > 1`` (shrinking) the kernel widens with the scale so
  every input pixel contributes (anti-aliasing, as PIL's antialiased
  bilinear filter). Constant images stay constant.

  Returns:
    float64 ``[n_out, n_in]``; ``out = W_rows @ image @ W_cols.T``.
  """
  scale = n_in / n_out
  radius = max(scale, 1.0)
  centres = (np.arange(n_out) + 0.5) * scale
  sources = np.arange(n_in) + 0.5
  w = np.maximum(0.0, 1.0 - np.abs(sources[None, :] - centres[:, None]) /
                 radius)
  return w / w.sum(axis=1, keepdims=True)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes one 2-D image with :func:`_resample_matrix` along each axis.

  Args:
    image: ``[h, w]`` float array.
    height, width: output size, ``>= 1``.

  Returns:
    float64 ``[height, width]``.
  """
  image = np.asarray(image, dtype=np.float64)
  if image.ndim != 2:
    raise ValueError(f'resize_image takes one [h, w] image, got shape '
                     f'{image.shape}.')
  rows = _resample_matrix(image.shape[0], int(height))
  cols = _resample_matrix(image.shape[1], int(width))
  return rows @ image @ cols.T


def _check_positive_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  if value < 1:
    raise ValueError(f'{name} must be a positive integer, got {value}.')
  return int(value)


def _as_unit_images(images, max_value) -> np.ndarray:
  """Checks ``[n, h, w(, 1)]`` images; returns float64 ``[n, h, w]`` / max."""
  x = np.asarray(images)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3 or x.shape[0] < 1 or min(x.shape[1:]) < 1:
    raise ValueError(f'images must be greyscale [n, h, w] or [n, h, w, 1] '
                     f'with n >= 1, got shape {np.shape(images)}.')
  is_bool = x.dtype == np.bool_
  if not (is_bool or np.issubdtype(x.dtype, np.integer) or
          np.issubdtype(x.dtype, np.floating)):
    raise ValueError(f'images must be integers or reals, got dtype {x.dtype}.')
  is_uint8 = x.dtype == np.uint8
  x = x.astype(np.float64)
  if not np.all(np.isfinite(x)):
    bad = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
    raise ValueError(f'images {bad[:10].tolist()} hold NaN or infinite values.')
  if x.min() < 0:
    bad = np.flatnonzero(x.min(axis=(1, 2)) < 0)
    raise ValueError(f'images {bad[:10].tolist()} hold negative values (min '
                     f'{x.min()}), outside [0, max_value]; expect white ink '
                     'on a zero background.')
  if max_value is None:
    max_value = 255.0 if is_uint8 else 1.0 if is_bool else float(x.max())
  max_value = float(max_value)
  if not max_value > 0:
    raise ValueError(f'max_value must be > 0, got {max_value} (all images '
                     'blank, or pass max_value explicitly).')
  if x.max() > max_value:
    raise ValueError(f'pixel values reach {x.max()}, outside [0, max_value = '
                     f'{max_value}]; pass the true max_value of the data (255 '
                     'for 8-bit, 16 for UCI digits).')
  return x / max_value


def mnist_style(images, *, box: int = 20, size: int = 28,
                max_value: Optional[float] = None,
                threshold: float = 0.0) -> np.ndarray:
  """Brings greyscale digit images to MNIST's format, the way MNIST was made.

  MNIST (LeCun et al.) size-normalised each NIST digit to fit a 20x20 box
  keeping its aspect ratio (anti-aliasing makes grey levels), then placed it
  in a 28x28 field so that its centre of mass sits at the field's centre.
  Measured on MNIST's training images (pixel ``i`` at coordinate ``i``), the
  centre of mass lies in ``[13.5, 14.5]`` on both axes, median 14.0: the
  target is ``size / 2`` reached by an integer shift. Per image:

  1. values divided by ``max_value`` (clipped to ``[0, 1]`` at the end);
  2. crop to the bounding box of the ink, pixels ``> threshold``;
  3. resize so the longer side is ``box`` pixels and the shorter
     ``max(1, round(short * box / long))`` (half up), with anti-aliased
     linear resampling (:func:`_resample_matrix`, pure NumPy);
  4. paste into a zero ``size x size`` canvas at the integer offset
     ``round(size / 2 - com)`` (half up) on each axis, where ``com`` is the
     centre of mass of the resized box; the offset is clipped to
     ``[0, size - side]`` so no ink is cut off (then the centre of mass
     misses the centre by more than half a pixel; this needs very lopsided
     digits).

  Args:
    images: ``[n, h, w]`` or ``[n, h, w, 1]``, any integer, bool or real
      dtype, white (high) ink on black (zero) background; any ``h, w``
      (e.g. 8x8 UCI digits in ``0..16``, 28x28 ARDIS in ``0..255``).
    box: side of the box the longer side is resized to (MNIST: 20).
    size: side of the output canvas (MNIST: 28), ``>= box``.
    max_value: the value of full ink. Default: 255 for uint8, 1 for bool,
      else the largest value in ``images`` (pass it for a known range, e.g.
      16 for the UCI digits, 255 for 8-bit data stored as floats or ints).
    threshold: ink is a pixel whose value over ``max_value`` exceeds this,
      in ``[0, 1)``; raise it to ignore faint scanning noise when cropping.

  Returns:
    float32 ``[n, size, size, 1]`` in ``[0, 1]``.

  Raises:
    ValueError: bad shape, dtype, ``box``/``size``/``threshold``, values
      outside ``[0, max_value]``, or blank images (their indices named).
  """
  box = _check_positive_int('box', box)
  size = _check_positive_int('size', size)
  if box > size:
    raise ValueError(f'box = {box} must not exceed size = {size}.')
  if not 0.0 <= float(threshold) < 1.0:
    raise ValueError(f'threshold must lie in [0, 1), got {threshold}.')
  x = _as_unit_images(images, max_value)
  ink = x > threshold
  blank = np.flatnonzero(~ink.any(axis=(1, 2)))
  if blank.size:
    shown = blank[:20].tolist()
    more = f' (and {blank.size - 20} more)' if blank.size > 20 else ''
    raise ValueError(f'{blank.size} of {len(x)} images have no ink above '
                     f'threshold {threshold}: indices {shown}{more}. Drop '
                     'them, or check max_value / threshold.')
  out = np.zeros((len(x), size, size), np.float32)
  for k in range(len(x)):
    out[k] = _mnist_style_one(x[k], ink[k], box, size)
  return out[..., None]


def _mnist_style_one(image: np.ndarray, ink: np.ndarray, box: int,
                     size: int) -> np.ndarray:
  """Crop, resize and centre one ``[h, w]`` image in ``[0, 1]``."""
  rows = np.flatnonzero(ink.any(axis=1))
  cols = np.flatnonzero(ink.any(axis=0))
  crop = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  h, w = crop.shape
  long_side = max(h, w)
  new_h = max(1, _round_half_up(h * box / long_side))
  new_w = max(1, _round_half_up(w * box / long_side))
  if h == long_side:
    new_h = box
  if w == long_side:
    new_w = box
  small = np.clip(resize_image(crop, new_h, new_w), 0.0, 1.0)
  mass = small.sum()
  com_y = (small.sum(axis=1) * np.arange(new_h)).sum() / mass
  com_x = (small.sum(axis=0) * np.arange(new_w)).sum() / mass
  top = min(max(_round_half_up(size / 2 - com_y), 0), size - new_h)
  left = min(max(_round_half_up(size / 2 - com_x), 0), size - new_w)
  canvas = np.zeros((size, size), np.float32)
  canvas[top:top + new_h, left:left + new_w] = small
  return canvas


def centre_of_mass(images) -> np.ndarray:
  """Centres of mass ``(row, col)`` of ``[n, h, w(, 1)]`` images, ``[n, 2]``.

  Pixel ``(i, j)`` sits at coordinate ``(i, j)``, so MNIST digits give values
  near ``(14, 14)``.
  """
  x = np.asarray(images, dtype=np.float64)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3:
    raise ValueError(f'images must be [n, h, w] or [n, h, w, 1], got shape '
                     f'{np.shape(images)}.')
  mass = x.sum(axis=(1, 2))
  if np.any(mass <= 0):
    raise ValueError(f'blank images at indices '
                     f'{np.flatnonzero(mass <= 0)[:20].tolist()} have no '
                     'centre of mass.')
  rows = (x.sum(axis=2) * np.arange(x.shape[1])).sum(axis=1) / mass
  cols = (x.sum(axis=1) * np.arange(x.shape[2])).sum(axis=1) / mass
  return np.stack([rows, cols], axis=1)


# ----------------------------------------------------------------------------
# UCI optical digits (bundled with scikit-learn).
# ----------------------------------------------------------------------------

_UCI_MAX = 16  # Each 8x8 pixel counts the on-bits of a 4x4 block of 32x32.
_UCI_SPLITS = ('train', 'test', 'all')


def _check_digit(digit) -> int:
  if (isinstance(digit, bool) or not isinstance(digit, numbers.Integral) or
      not 0 <= digit < _NUM_CLASSES):
    raise ValueError(f'digit must be an integer in 0..9, got {digit!r}.')
  return int(digit)


def _split_indices(n: int, test_fraction: float,
                   seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Seeded split of ``range(n)``: ``round(test_fraction * n)`` (half up) test.

  Returns sorted ``(train, test)`` int64 index arrays, disjoint and covering.
  """
  num_test = _round_half_up(test_fraction * n + 1e-9)
  order = np.random.default_rng(seed).permutation(n)
  return np.sort(order[num_test:]), np.sort(order[:num_test])


def load_uci_digits(digit: int = 7, *, split: str = 'train',
                    test_fraction: float = 0.25,
                    seed: int = 0) -> np.ndarray:
  """One digit of the UCI optical digits, MNIST-formatted, train or test part.

  scikit-learn bundles these (``sklearn.datasets.load_digits``: 1797 images,
  8x8, values ``0..16``, from 43 writers; the UCI ``optdigits.tes`` file), so
  they load offline. They are 32x32 bitmaps block-averaged to 8x8, so after
  :func:`mnist_style` (``max_value=16``) they are smooth and blurry: a
  different style from MNIST's pen strokes.

  The digit's images (174-183 of each; 179 7s) are split by a permutation
  seeded with ``seed``: ``round(test_fraction * n)`` (half up) go to
  ``'test'``, the rest to ``'train'``; the two parts are disjoint for the
  same ``seed`` and ``test_fraction``. For 7s with the defaults: 134 train,
  45 test.

  Args:
    digit: the class, ``0..9``.
    split: ``'train'``, ``'test'`` or ``'all'`` (every image, in file order).
    test_fraction: share of the test part, in ``(0, 1)``.
    seed: seed of the split.

  Returns:
    float32 ``[n, 28, 28, 1]`` in ``[0, 1]``.

  Raises:
    ImportError: scikit-learn is not installed.
    ValueError: bad ``digit``, ``split`` or ``test_fraction``.
  """
  digit = _check_digit(digit)
  if split not in _UCI_SPLITS:
    raise ValueError(f'split must be one of {_UCI_SPLITS}, got {split!r}.')
  if not 0.0 < float(test_fraction) < 1.0:
    raise ValueError(f'test_fraction must lie in (0, 1), got '
                     f'{test_fraction!r}.')
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'load_uci_digits needs scikit-learn, which ships the UCI digits: '
        "pip install 'scikit-learn>=1.4'") from e
  bunch = datasets.load_digits()
  images = bunch.images[bunch.target == digit]
  x = mnist_style(images, max_value=_UCI_MAX)
  if split == 'all':
    return x
  train, test = _split_indices(len(x), float(test_fraction), seed)
  return x[train] if split == 'train' else x[test]


# ----------------------------------------------------------------------------
# ARDIS DATASET_IV CSV files.
# ----------------------------------------------------------------------------

_ARDIS_FILES = {
    'train': ('ARDIS_train_2828.csv', 'ARDIS_train_labels.csv'),
    'test': ('ARDIS_test_2828.csv', 'ARDIS_test_labels.csv'),
}


def _ardis_help(data_dir: Path) -> str:
  files = ', '.join(f for pair in _ARDIS_FILES.values() for f in pair)
  return (f'Download ARDIS DATASET_IV from {_ARDIS_URL} (the archive '
          f'ARDIS_DATASET_IV), extract it and put {files} (plain or .gz) in '
          f'{data_dir}, or pass data_dir=<that folder>.')


def _find_csv(data_dir: Path, name: str) -> Path:
  for candidate in (data_dir / name, data_dir / (name + '.gz')):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f'no ARDIS file {data_dir / name}[.gz]. '
                          f'{_ardis_help(data_dir)}')


def read_number_rows(path: PathLike) -> list:
  """Reads a numeric text table (``.csv`` or ``.csv.gz``) as float rows.

  Values are separated by commas and/or whitespace; blank lines are skipped.

  Returns:
    A list of ``(line_number, float64 [k])`` pairs, line numbers from 1.

  Raises:
    ValueError: a non-numeric value, naming the file, line and value.
  """
  path = Path(path)
  opener = gzip.open if path.name.endswith('.gz') else open
  rows = []
  with opener(path, 'rt') as f:
    for line_no, line in enumerate(f, start=1):
      tokens = line.replace(',', ' ').split()
      if not tokens:
        continue
      try:
        values = np.array(tokens, dtype=np.float64)
      except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise ValueError(f'{path}, row {line_no}: non-numeric value '
                         f'{bad!r}.') from None
      rows.append((line_no, values))
  return rows


def _is_number(token: str) -> bool:
  try:
    float(token)
  except ValueError:
    return False
  return True


def _parse_ardis_images(path: Path) -> np.ndarray:
  """``[n, 784]`` pixel rows in ``0..255`` -> float64 array."""
  rows = read_number_rows(path)
  if not rows:
    raise ValueError(f'{path} holds no image rows.')
  for line_no, values in rows:
    if values.size != _ARDIS_PIXELS:
      raise ValueError(f'{path}, row {line_no}: {values.size} values, '
                       f'expected {_ARDIS_PIXELS} (one 28x28 image per row). '
                       'The file is truncated or corrupt; download it again.')
    if (not np.all(np.isfinite(values)) or values.min() < 0 or
        values.max() > 255):
      raise ValueError(f'{path}, row {line_no}: pixel values span '
                       f'[{values.min()}, {values.max()}], expected 0..255.')
  return np.stack([values for _, values in rows])


def _parse_ardis_labels(path: Path) -> np.ndarray:
  """One-hot ``[n, 10]`` rows or one integer per row -> int32 ``[n]``."""
  rows = read_number_rows(path)
  if not rows:
    raise ValueError(f'{path} holds no label rows.')
  width = rows[0][1].size
  if width not in (1, _NUM_CLASSES):
    raise ValueError(f'{path}, row {rows[0][0]}: {width} values; expected a '
                     f'one-hot row of {_NUM_CLASSES} or one integer label.')
  labels = np.empty(len(rows), np.int32)
  for k, (line_no, values) in enumerate(rows):
    if values.size != width:
      raise ValueError(f'{path}, row {line_no}: {values.size} values, but row '
                       f'{rows[0][0]} has {width}; every row needs the same '
                       'label format.')
    if width == 1:
      v = values[0]
      if not (v == np.floor(v) and 0 <= v < _NUM_CLASSES):
        raise ValueError(f'{path}, row {line_no}: label {v}, expected an '
                         'integer in 0..9.')
      labels[k] = int(v)
    else:
      if not (np.all((values == 0) | (values == 1)) and values.sum() == 1):
        raise ValueError(f'{path}, row {line_no}: {values.tolist()} is not '
                         'one-hot (exactly one 1, the rest 0).')
      labels[k] = int(np.argmax(values))
  return labels


def looks_inverted(images: np.ndarray) -> bool:
  """Whether ``[n, h, w]`` images in ``[0, 1]`` look black-on-white.

  MNIST has white ink on a black (0) background, so its border pixels are
  nearly all 0. True when the mean of the outermost ring of pixels, over all
  images, exceeds 0.5.
  """
  x = np.asarray(images)
  ring = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]],
                        axis=1)
  return bool(ring.mean() > 0.5)


def load_ardis(data_dir: Optional[PathLike] = None, split: str = 'train', *,
               digit: Optional[int] = 7, transpose: bool = False,
               invert: Optional[bool] = None,
               restyle: bool = False) -> Tuple[np.ndarray, np.ndarray]:
  """Reads one split of ARDIS DATASET_IV from its CSV files.

  Files (plain ``.csv`` or gzipped ``.csv.gz``) in ``data_dir``:
  ``ARDIS_{train,test}_2828.csv``: one image per row, 784 grey values
  ``0..255`` separated by commas or whitespace, a 28x28 image in row-major
  order; ``ARDIS_{train,test}_labels.csv``: per image either a one-hot row of
  10 values or a single integer label. The release has 6600 training and
  1000 test images, 660 and 100 of them 7s.

  Format assumptions (options to change them): DATASET_IV is published as
  MNIST-compatible, i.e. upright when read row-major (``transpose=False``,
  as the "Attack of the Tails" code reads it; this repo's EMNIST loader
  already undoes EMNIST's own transposition) and white ink on black
  (``invert=None`` checks this: it inverts ``x -> 1 - x`` only if
  :func:`looks_inverted`; pass True/False to force). The images are already
  28x28 and centred, so they are used as is (the paper's setup);
  ``restyle=True`` passes them through :func:`mnist_style` as well.

  Args:
    data_dir: folder with the files; default ``<repo>/data/ardis``.
    split: ``'train'`` or ``'test'``.
    digit: keep only this class (0..9), or None for all.
    transpose: swap rows and columns of every image.
    invert: None (auto, see above), True or False.
    restyle: re-normalise with :func:`mnist_style`.

  Returns:
    ``(x, y)``: float32 ``[n, 28, 28, 1]`` in ``[0, 1]`` and int32 ``[n]``
    labels (all equal to ``digit`` when it is given).

  Raises:
    FileNotFoundError: a missing file, with where to get the data.
    ValueError: bad arguments, or a corrupt file (named, with the row).
  """
  if split not in _ARDIS_FILES:
    raise ValueError(f'split must be one of {tuple(_ARDIS_FILES)}, got '
                     f'{split!r}.')
  if digit is not None:
    digit = _check_digit(digit)
  data_dir = _REPO_ARDIS_DIR if data_dir is None else Path(data_dir)
  images_path = _find_csv(data_dir, _ARDIS_FILES[split][0])
  labels_path = _find_csv(data_dir, _ARDIS_FILES[split][1])
  pixels = _parse_ardis_images(images_path)
  labels = _parse_ardis_labels(labels_path)
  if len(labels) != len(pixels):
    raise ValueError(f'{labels_path} has {len(labels)} label rows but '
                     f'{images_path} has {len(pixels)} image rows; they must '
                     'match one to one (re-extract both files).')
  x = (pixels / 255.0).reshape(-1, 28, 28)
  if transpose:
    x = np.swapaxes(x, 1, 2)
  if invert is None:
    invert = looks_inverted(x)
  if invert:
    x = 1.0 - x
  if digit is not None:
    keep = labels == digit
    x, labels = x[keep], labels[keep]
  if restyle and len(x):
    x = mnist_style(x, max_value=1.0)
  else:
    x = x.astype(np.float32)[..., None]
  return x, labels


# ----------------------------------------------------------------------------
# Edge sources.
# ----------------------------------------------------------------------------


class EdgeSource(NamedTuple):
  """Edge-case images of one digit, MNIST-formatted.

  Attributes:
    train_x: float32 ``[n_train, 28, 28, 1]``, the attacker's candidate pool
      (e.g. 660 ARDIS training 7s, of which the paper samples 66).
    test_x: float32 ``[n_test, 28, 28, 1]``, the target-task images (e.g. the
      100 7s of the 1000 ARDIS test images).
    name: the source name (one of ``EDGE_SOURCE_NAMES``).
    description: one line on where the images come from.
  """
  train_x: np.ndarray
  test_x: np.ndarray
  name: str
  description: str


def load_edge_source(name: str, *, data_dir: Optional[PathLike] = None,
                     digit: int = 7, seed: int = 0) -> EdgeSource:
  """Train (attacker pool) and test (target task) images of one edge digit.

  Args:
    name: ``'uci_digits'`` (offline, bundled with scikit-learn, split by
      ``seed`` as :func:`load_uci_digits`) or ``'ardis'`` (ARDIS DATASET_IV
      CSV files in ``data_dir``, its own train/test split; ``seed`` unused).
    data_dir: the ARDIS folder (default ``<repo>/data/ardis``); ignored for
      ``'uci_digits'``.
    digit: the class, 0..9 (the paper: 7, relabelled 1 by the attacker).
    seed: seed of the UCI train/test split.

  Returns:
    :class:`EdgeSource`.

  Raises:
    ValueError: unknown ``name`` (the choices listed) or bad ``digit``.
    FileNotFoundError, ImportError: as :func:`load_ardis`,
      :func:`load_uci_digits`.
  """
  if name not in EDGE_SOURCE_NAMES:
    raise ValueError(f'unknown edge source {name!r}; expected one of '
                     f'{EDGE_SOURCE_NAMES}.')
  digit = _check_digit(digit)
  if name == 'uci_digits':
    train = load_uci_digits(digit, split='train', seed=seed)
    test = load_uci_digits(digit, split='test', seed=seed)
    description = (f'UCI optical digits (scikit-learn), {digit}s, 8x8 -> '
                   f'MNIST style; {len(train)} train / {len(test)} test, '
                   f'split seed {seed}')
  else:
    train, _ = load_ardis(data_dir, 'train', digit=digit)
    test, _ = load_ardis(data_dir, 'test', digit=digit)
    description = (f'ARDIS DATASET_IV (Swedish church records), {digit}s; '
                   f'{len(train)} train / {len(test)} test')
  return EdgeSource(train_x=train, test_x=test, name=name,
                    description=description)


# ----------------------------------------------------------------------------
# Figure 5: edge examples shared between the attacker and honest clients.
# ----------------------------------------------------------------------------


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
    raise ValueError(f'seed must be an integer, got {seed!r}.')
  return int(seed)


def honest_edge_split(num_edge: int, attacker_share: float,
                      seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """Splits edge examples between the attacker and honest clients (Figure 5).

  The paper gives the adversary ``p`` percent of the edge set (labelled with
  the attacker's target) and honest clients the other ``100 - p`` percent
  with their correct labels, for ``p = 100, 50, 10``. Here
  ``attacker_share = p / 100``. The attacker gets exactly
  ``k = floor(attacker_share * num_edge + 0.5)`` examples (round half up; a
  1e-9 slack absorbs float error, so ``0.35 * 10`` gives 4), chosen by a
  permutation seeded with ``seed``; honest clients get the other
  ``num_edge - k``.

  Args:
    num_edge: number of edge examples, ``>= 1``.
    attacker_share: the attacker's fraction, in ``(0, 1]`` (0.5, not 50).
    seed: seed of the permutation.

  Returns:
    ``(attacker_idx, honest_idx)``: sorted int64 index arrays into the edge
    set, disjoint, together ``range(num_edge)``.

  Raises:
    ValueError: bad ``num_edge``, ``attacker_share`` outside ``(0, 1]``, or
      a share so small that the attacker would get no example.
  """
  num_edge = _check_positive_int('num_edge', num_edge)
  seed = _check_seed(seed)
  if isinstance(attacker_share, bool) or not isinstance(attacker_share,
                                                        numbers.Real):
    raise ValueError(f'attacker_share must be a number in (0, 1], got '
                     f'{attacker_share!r}.')
  share = float(attacker_share)
  if not 0.0 < share <= 1.0:
    hint = (f' It is a fraction: for {share:g}% pass {share / 100:g}.'
            if 1.0 < share <= 100.0 else '')
    raise ValueError(f'attacker_share must lie in (0, 1], got {share}.{hint}')
  k = _round_half_up(share * num_edge + 1e-9)
  if k < 1:
    raise ValueError(f'attacker_share = {share} of num_edge = {num_edge} '
                     f'rounds to 0 attacker examples; use a share >= '
                     f'{0.5 / num_edge:.3g} or more edge examples.')
  order = np.random.default_rng(seed).permutation(num_edge)
  return np.sort(order[:k]), np.sort(order[k:])


def spread_over_clients(honest_idx, clients: Union[int, Sequence[int]],
                        seed: int = 0, *,
                        mode: str = 'round_robin') -> Dict[int, np.ndarray]:
  """Hands the honest share of the edge examples to chosen honest clients.

  The paper (Section 4, fairness study) partitions the edge examples among
  the attacker and "the first 10 clients". Here the indices are shuffled
  with ``seed``, then:

  * ``mode='round_robin'``: dealt in turn, client ``clients[j]`` gets the
    shuffled positions ``j, j + m, j + 2m, ...`` (``m`` clients), so sizes
    differ by at most one;
  * ``mode='random'``: each example goes to a uniformly random client
    (sizes vary, some may get none).

  Clients may end up with no example (more clients than examples).

  Args:
    honest_idx: int ``[h]`` edge-set indices (from :func:`honest_edge_split`).
    clients: the number of clients ``m`` (ids ``0..m-1``) or a sequence of
      distinct non-negative client ids.
    seed: seed of the shuffle and of the random assignment.
    mode: ``'round_robin'`` or ``'random'``.

  Returns:
    ``{client_id: sorted int64 index array}`` for every client, in the order
    given; the arrays are disjoint and together hold ``honest_idx``.

  Raises:
    ValueError: bad ``honest_idx``, ``clients``, ``seed`` or ``mode``.
  """
  idx = np.asarray(honest_idx)
  if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
    raise ValueError(f'honest_idx must be a 1-D integer array, got '
                     f'{idx.dtype} {idx.shape}.')
  if len(np.unique(idx)) != idx.size:
    raise ValueError('honest_idx holds repeated indices; each edge example '
                     'goes to one client.')
  idx = idx.astype(np.int64)
  if isinstance(clients, numbers.Integral) and not isinstance(clients, bool):
    ids = list(range(_check_positive_int('clients', clients)))
  else:
    ids = list(clients)
    if not ids or any(isinstance(c, bool) or not isinstance(c, numbers.Integral)
                      or c < 0 for c in ids):
      raise ValueError(f'clients must be a positive count or a non-empty '
                       'sequence of non-negative integer ids, got '
                       f'{clients!r}.')
    if len(set(ids)) != len(ids):
      raise ValueError(f'client ids must be distinct, got {ids}.')
    ids = [int(c) for c in ids]
  if mode not in ('round_robin', 'random'):
    raise ValueError(f"mode must be 'round_robin' or 'random', got {mode!r}.")
  rng = np.random.default_rng(_check_seed(seed))
  shuffled = idx[rng.permutation(idx.size)]
  m = len(ids)
  if mode == 'round_robin':
    owner = np.arange(idx.size) % m
  else:
    owner = rng.integers(0, m, size=idx.size)
  return {c: np.sort(shuffled[owner == j]) for j, c in enumerate(ids)}
