"""Logging set-up shared by the binaries."""

import logging as py_logging

from absl import logging

_NOISY_LIBRARIES = ("/orbax/", "/grain/")


def quiet_library_logs() -> None:
  """Orbax and grain log every save and read at INFO; keep only their warnings."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= py_logging.WARNING
      or not any(part in record.pathname for part in _NOISY_LIBRARIES))
