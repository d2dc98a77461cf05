"""JSON-lines metric writer: one JSON object per line in ``metrics.jsonl``.

With ``tensorboard_dir`` the same records also go to TensorBoard event files
(see :mod:`fl_jax.metrics.tensorboard`).
"""
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from fl_jax.metrics.tensorboard import TensorBoardWriter


def to_jsonable(value: Any) -> Any:
  """Converts arrays / numpy scalars (possibly nested) to plain Python."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if hasattr(value, '__array__') or isinstance(value, np.generic):
    arr = np.asarray(value)
    if arr.dtype == bool:
      return arr.tolist()
    if arr.ndim == 0:
      v = arr.item()
      return None if isinstance(v, float) and not np.isfinite(v) else v
    return arr.tolist()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


class JsonlWriter:
  """Appends JSON objects to ``path`` (created with its directory).

  Args:
    path: the ``.jsonl`` file.
    tensorboard_dir: if given, every record with a ``round`` also has its
      scalar fields written to TensorBoard event files there, at step
      ``round`` (a one-line notice, and JSON lines only, without
      tensorboardX).
  """

  def __init__(self, path: str, tensorboard_dir: Optional[str] = None):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.tensorboard_dir = tensorboard_dir
    self._tb = None if tensorboard_dir is None else TensorBoardWriter(tensorboard_dir)

  def write(self, record: Mapping[str, Any]) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(to_jsonable(record)) + '\n')
    if self._tb is not None and 'round' in record:
      self._tb.write(record)

  def close(self) -> None:
    """Closes the TensorBoard event file (the JSON lines need no closing)."""
    if self._tb is not None:
      self._tb.close()

  def truncate_after(self, round_idx: int) -> None:
    """Drops records with ``round > round_idx`` (used when resuming).

    The TensorBoard events written from here on start with a purge step
    ``round_idx + 1``, so TensorBoard hides the dropped rounds too.
    """
    if self._tb is not None:
      self._tb.close()
      self._tb = TensorBoardWriter(self.tensorboard_dir, purge_step=int(round_idx) + 1)
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    with open(self.path, 'w') as f:
      for r in rows:
        if r.get('round', -1) <= round_idx:
          f.write(json.dumps(r) + '\n')


def read_jsonl(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
