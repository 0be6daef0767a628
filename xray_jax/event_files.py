"""TensorBoard event files of scalars, written synchronously: each step is one record
appended with one unbuffered write, so a full disk fails that call and leaves nothing in a
buffer, a thread or an exit hook to fail again later."""

import contextlib
import os
import pathlib
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def _hidden(module: str) -> Iterator[None]:
  """`import module` fails inside, unless it was imported already."""
  if module in sys.modules:
    yield
    return
  sys.modules[module] = None  # type: ignore[assignment]
  try:
    yield
  finally:
    del sys.modules[module]


# tensorboardX imports torch where it is installed, only to accept its tensors; that costs
# every process seconds, and its protos and checksum need none.
with _hidden("torch"):
  from tensorboardX.proto import event_pb2, summary_pb2
  from tensorboardX.record_writer import masked_crc32c

FILE_VERSION = "brain.Event:2"


def _record(data: bytes) -> bytes:
  """`data` framed as a TFRecord: its length, the length's checksum, the data, its
  checksum (little-endian, masked CRC-32C)."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _scalars_event(step: int, scalars: Mapping[str, float]) -> event_pb2.Event:
  return event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=name, simple_value=float(value))
             for name, value in scalars.items()]))


class EventFile:
  """A new event file in `directory`. `purge_step`: TensorBoard hides the events of earlier
  files in the directory from that step on (a run resumed at `purge_step - 1` replays
  them)."""

  def __init__(self, directory: pathlib.Path, purge_step: int):
    directory.mkdir(parents=True, exist_ok=True)
    # Fixed-width time first: TensorBoard reads the files of a directory in name order.
    self.path = directory / f"events.out.tfevents.{time.time():017.6f}.{socket.gethostname()}"
    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    now = time.time()
    try:
      self._append(event_pb2.Event(wall_time=now, file_version=FILE_VERSION),
                   event_pb2.Event(wall_time=now, step=purge_step, session_log=(
                       event_pb2.SessionLog(status=event_pb2.SessionLog.START))))
    except BaseException:
      self.close()
      raise

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self._append(_scalars_event(step, scalars))

  def _append(self, *events: event_pb2.Event) -> None:
    data = b"".join(_record(event.SerializeToString()) for event in events)
    while data:  # A write cut short by a full disk raises at the next one.
      data = data[os.write(self._fd, data):]

  def close(self) -> None:
    os.close(self._fd)
