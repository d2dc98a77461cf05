"""JSON-lines metric writer: one JSON object per line in ``metrics.jsonl``."""
import json
import os
from typing import Any, Mapping

import numpy as np


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
  """Appends JSON objects to ``path`` (created with its directory)."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, record: Mapping[str, Any]) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(to_jsonable(record)) + '\n')

  def truncate_after(self, round_idx: int) -> None:
    """Drops records with ``round > round_idx`` (used when resuming)."""
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
