"""TensorBoard event files of scalar metrics, written without TensorFlow.

:class:`TensorBoardWriter` writes each numeric field of a metrics record as a
scalar summary at step ``record['round']`` through tensorboardX (pure Python
over protobuf). When tensorboardX is not installed it prints one line saying
so and writes nothing. :func:`read_scalars` reads the event files of a folder
back (the TFRecord framing with its CRCs, parsed with tensorboardX's protos),
e.g. to plot from them or to check them in tests. View them with
``tensorboard --logdir WORKDIR``.
"""
import glob
import numbers
import os
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

EVENTS_GLOB = 'events.out.tfevents.*'
_NOTICE_SHOWN = []


def _stderr(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def scalar_fields(record: Mapping[str, Any]) -> Dict[str, float]:
  """The fields of ``record`` that are real scalars (bools, lists, strings and
  ``round`` left out), as floats; NaN and Inf are kept (TensorBoard shows them)."""
  out = {}
  for k, v in record.items():
    if k == 'round' or isinstance(v, bool):
      continue
    if hasattr(v, 'shape') and getattr(v, 'shape') == ():
      v = v.item()
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
      out[str(k)] = float(v)
  return out


class TensorBoardWriter:
  """Scalars of metrics records to ``logdir/events.out.tfevents.*``.

  Args:
    logdir: folder of the event files (created on the first write).
    purge_step: when continuing a run from round ``r``, ``r + 1``: the
      events of an earlier, interrupted writer at steps ``>= purge_step``
      are then hidden by TensorBoard (the rows ``metrics.jsonl`` drops).
    notice: prints the one-line notice when tensorboardX is missing (shown
      once per process).
  """

  def __init__(self, logdir: str, purge_step: Optional[int] = None,
               notice: Callable[[str], None] = _stderr):
    self.logdir = logdir
    self.purge_step = purge_step
    self._notice = notice
    self._writer = None
    self.enabled = True

  def _open(self):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      self.enabled = False
      if not _NOTICE_SHOWN:
        _NOTICE_SHOWN.append(True)
        self._notice('TensorBoard event files are not written: tensorboardX is not '
                     'installed (pip install tensorboardX); metrics.jsonl is.')
      return None
    os.makedirs(self.logdir, exist_ok=True)
    # File names hold the time in whole seconds; the suffix in nanoseconds keeps
    # a writer opened within the same second (a quick resume) from overwriting
    # the last one, and keeps name order = creation order.
    return SummaryWriter(logdir=self.logdir, purge_step=self.purge_step,
                         filename_suffix=f'.{time.time_ns()}')

  def write(self, record: Mapping[str, Any]) -> None:
    """Adds the scalar fields of ``record`` at step ``record['round']`` and flushes."""
    if not self.enabled:
      return
    if self._writer is None:
      self._writer = self._open()
      if self._writer is None:
        return
    step = int(record['round'])
    for tag, value in scalar_fields(record).items():
      self._writer.add_scalar(tag, value, global_step=step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _masked_crc(data: bytes) -> int:
  from tensorboardX.crc32c import crc32c  # pylint: disable=g-import-not-at-top
  x = crc32c(data) & 0xffffffff
  return (((x >> 15) | (x << 17)) + 0xa282ead8) & 0xffffffff


def read_events(path: str) -> list:
  """The ``Event`` protos of one event file, in order.

  Raises:
    ValueError: a record is truncated or fails its CRC (naming the file and
      the byte offset).
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    raw = f.read()
  events, pos = [], 0
  while pos < len(raw):
    if pos + 12 > len(raw):
      raise ValueError(f'{path}: truncated record header at byte {pos}')
    header = raw[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (header_crc,) = struct.unpack('<I', raw[pos + 8:pos + 12])
    if header_crc != _masked_crc(header):
      raise ValueError(f'{path}: bad record-length CRC at byte {pos}')
    data = raw[pos + 12:pos + 12 + length]
    if len(data) < length or pos + 16 + length > len(raw):
      raise ValueError(f'{path}: truncated record at byte {pos}')
    (data_crc,) = struct.unpack('<I', raw[pos + 12 + length:pos + 16 + length])
    if data_crc != _masked_crc(data):
      raise ValueError(f'{path}: bad record CRC at byte {pos}')
    events.append(event_pb2.Event.FromString(data))
    pos += 16 + length
  return events


def read_scalars(logdir: str) -> Dict[str, List[Tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` of every event file in ``logdir``.

  Files are read in name order (their names start with the creation time);
  a file that starts with a purge step (a continued run) drops the earlier
  values at steps ``>= purge_step``, as TensorBoard does.
  """
  out: Dict[str, List[Tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, EVENTS_GLOB))):
    for ev in read_events(path):
      if ev.HasField('session_log') and ev.session_log.status == ev.session_log.START:
        out = {t: [(s, v) for s, v in rows if s < ev.step] for t, rows in out.items()}
        continue
      if not ev.HasField('summary'):
        continue
      for value in ev.summary.value:
        if value.HasField('simple_value'):
          out.setdefault(value.tag, []).append((int(ev.step), float(value.simple_value)))
  return out

