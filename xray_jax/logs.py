"""Logging set-up shared by the binaries."""

import logging as py_logging
import sys
import traceback

from absl import logging

from xray_jax import storage

_NOISY_LIBRARIES = ("/orbax/", "/grain/")
# Messages that mislead more than they tell: JAX looking for a TPU on every CPU or GPU
# machine, and Orbax's note that an evaluation job opened checkpoints read-only (as asked).
_MISLEADING = ("Unable to initialize backend 'tpu'", "Given directory is read only")


def _full_disk_traceback(record: py_logging.LogRecord) -> bool:
  """A traceback that a library logs when a full or read-only filesystem stops a write
  (Orbax's save threads, asyncio's futures of that save): the binary reports that failure
  itself, in one line."""
  error = record.exc_info[1] if record.exc_info else None
  return error is not None and storage.storage_errno(error) is not None


def _keep(record: py_logging.LogRecord) -> bool:
  message = record.getMessage()
  if any(message.startswith(text) for text in _MISLEADING) or _full_disk_traceback(record):
    return False
  return record.levelno >= py_logging.WARNING or not any(
      part in record.pathname for part in _NOISY_LIBRARIES)


def quiet_library_logs() -> None:
  """Orbax and grain log every save and read at INFO: keep only their warnings, less the
  misleading ones above and the tracebacks of a full disk."""
  logging.get_absl_handler().addFilter(_keep)


def _drop_results_for_closed_loops(unraisable, report=sys.__unraisablehook__,
                                   walk=traceback.walk_tb) -> None:
  """`sys.unraisablehook` that drops a result handed to an asyncio event loop that has
  closed, which nothing awaits any more: when a full disk fails an Orbax save, Orbax closes
  its loop while TensorStore still writes, and each of those writes ends so. Reports every
  other unraisable exception as Python does. (The defaults outlive the module's globals at
  interpreter shutdown.)"""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and any(
      frame.f_code.co_name == "call_soon_threadsafe"
      for frame, _ in walk(unraisable.exc_traceback))):
    report(unraisable)


def quiet_closed_loop_results() -> None:
  """Keeps late results of a failed Orbax save off stderr (`_drop_results_for_closed_loops`)."""
  sys.unraisablehook = _drop_results_for_closed_loops
