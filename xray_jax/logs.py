"""Logging set-up shared by the binaries."""

import logging as py_logging

from absl import logging

_NOISY_LIBRARIES = ("/orbax/", "/grain/")
# Messages that mislead more than they tell: JAX looking for a TPU on every CPU or GPU
# machine, and Orbax's note that an evaluation job opened checkpoints read-only (as asked).
_MISLEADING = ("Unable to initialize backend 'tpu'", "Given directory is read only")


def _keep(record: py_logging.LogRecord) -> bool:
  message = record.getMessage()
  if any(message.startswith(text) for text in _MISLEADING):
    return False
  return record.levelno >= py_logging.WARNING or not any(
      part in record.pathname for part in _NOISY_LIBRARIES)


def quiet_library_logs() -> None:
  """Orbax and grain log every save and read at INFO: keep only their warnings, less the
  misleading ones above."""
  logging.get_absl_handler().addFilter(_keep)
