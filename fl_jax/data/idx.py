"""Reading and writing IDX files (the MNIST / EMNIST array format).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then
``ndim`` big-endian uint32 dimension sizes, then the array in C order as
big-endian values. The files usually travel gzipped (``*.gz``); gzip is
recognised by its own magic bytes, not by the file name.

References:
  LeCun, Cortes and Burges, "The MNIST database of handwritten digits"
  (file format section), http://yann.lecun.com/exdb/mnist/.
"""
import gzip
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

# IDX dtype code -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype('u1'),
    0x09: np.dtype('i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_GZIP_MAGIC = b'\x1f\x8b'
_FIX_HINT = ('Re-download the file (or copy it again), or point data_dir / '
             '--data_dir at a directory holding intact files.')


def _corrupt(path, what: str) -> ValueError:
  return ValueError(f'Corrupt IDX file {str(path)!r}: {what}. {_FIX_HINT}')


def _read_bytes(path: Path) -> bytes:
  """Returns the (decompressed) content of ``path``."""
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:2] != _GZIP_MAGIC:
    return raw
  try:
    return gzip.decompress(raw)
  except (EOFError, OSError, zlib.error) as e:
    raise _corrupt(path, f'the gzip stream cannot be decompressed ({e}); '
                   'the file is probably truncated') from e


def read_idx(path: PathLike) -> np.ndarray:
  """Parses an IDX file, plain or gzipped, into a NumPy array.

  The header is validated before the data are used: the magic number must
  start with two zero bytes, the dtype code must be one of the six defined
  codes (uint8, int8, int16, int32, float32, float64), and the file must hold
  exactly ``4 + 4 * ndim + prod(dims) * itemsize`` bytes.

  Args:
    path: the file (``.gz`` or not; gzip is detected from the content).

  Returns:
    An array of shape ``dims`` in native byte order (uint8 for MNIST).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ValueError: if the file is truncated, padded or not an IDX file; the
      message names the file, what was expected and how to fix it.
  """
  path = Path(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise _corrupt(path, f'expected a 4-byte magic number, the file holds '
                   f'only {len(data)} bytes')
  if data[0] != 0 or data[1] != 0:
    raise _corrupt(path, f'the magic number {data[:4].hex()} does not start '
                   'with two zero bytes (expected 0000<dtype><ndim>, e.g. '
                   '00000803 for MNIST images)')
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    valid = ', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)
    raise _corrupt(path, f'unknown dtype code 0x{code:02X} (expected one of '
                   f'{valid})')
  if ndim == 0:
    raise _corrupt(path, 'the header declares 0 dimensions (expected >= 1)')
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise _corrupt(path, f'expected a {header_len}-byte header for {ndim} '
                   f'dimensions, the file holds only {len(data)} bytes')
  dims = tuple(int(d) for d in np.frombuffer(data, '>u4', ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = header_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise _corrupt(path, f'the header declares shape {dims} of {dtype.name} '
                   f'({expected} bytes with the header), but the file holds '
                   f'{len(data)} bytes'
                   + (' (truncated)' if len(data) < expected else ''))
  array = np.frombuffer(data, dtype, offset=header_len).reshape(dims)
  return array.astype(dtype.newbyteorder('='))


def write_idx(path: PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file, gzipped if ``path`` ends in ``.gz``.

  Args:
    path: destination file.
    array: an array of at least one dimension with dtype uint8, int8, int16,
      int32, float32 or float64.

  Raises:
    ValueError: for a dtype IDX cannot hold or a 0-d array.
  """
  array = np.asarray(array)
  codes = {dt.newbyteorder('='): c for c, dt in _IDX_DTYPES.items()}
  native = array.dtype.newbyteorder('=')
  if native not in codes:
    raise ValueError(f'IDX cannot store dtype {array.dtype}; use one of '
                     f'{sorted(str(d) for d in codes)}.')
  if array.ndim == 0 or array.ndim > 255:
    raise ValueError(f'IDX needs 1 to 255 dimensions, got shape {array.shape}.')
  code = codes[native]
  header = bytes([0, 0, code, array.ndim])
  header += np.asarray(array.shape, '>u4').tobytes()
  payload = header + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
  path = Path(path)
  if path.suffix == '.gz':
    payload = gzip.compress(payload)
  path.write_bytes(payload)
