"""Writes that a full disk, a quota or a read-only filesystem stops: each becomes one
`errors.WriteError` line that names the file, what it was to hold and the space left."""

import contextlib
import errno
import math
import os
import pathlib
import re
import shutil
from collections.abc import Iterator

from xray_jax import errors

# What to do about each filesystem error that stops a write.
_REMEDIES = {errno.ENOSPC: "free some space and rerun",
             errno.EDQUOT: "free some of the quota and rerun",
             errno.EROFS: "make it writable and rerun"}
# TensorStore, which writes Orbax's arrays, raises ValueError quoting the OS error:
# "... Failed to write 350 bytes to file 4: No space left on device [os_error_code='28']".
_QUOTED_ERRNO = re.compile(r"os_error_code='(\d+)'")
_UNITS = ("kB", "MB", "GB", "TB")


def storage_errno(error: BaseException) -> int | None:
  """The errno when `error` is a full, over-quota or read-only filesystem's (an OSError, or
  TensorStore's ValueError that quotes one), else None."""
  code = error.errno if isinstance(error, OSError) else None
  if code is None and isinstance(error, ValueError):
    quoted = _QUOTED_ERRNO.search(str(error))
    code = int(quoted.group(1)) if quoted else None
  return code if code in _REMEDIES else None


def free_bytes(path: pathlib.Path) -> int:
  """Bytes this user may still write on the filesystem of `path` (or of its nearest existing
  parent folder)."""
  path = pathlib.Path(path).absolute()
  while not path.exists():
    path = path.parent
  return shutil.disk_usage(path).free


def format_bytes(count: float) -> str:
  """`count` in decimal units: "512 bytes", "96.3 kB", "1.2 GB"."""
  if count < 1000:
    return f"{int(count)} bytes"
  power = min(int(math.log10(count)) // 3, len(_UNITS))
  return f"{count / 1000**power:.1f} {_UNITS[power - 1]}"


def write_error(path: pathlib.Path, what: str | None, code: int,
                needed: int | None = None) -> errors.WriteError:
  """The error for `what` (e.g. "the checkpoint of step 40"; None: the file itself) that
  could not be written to `path`: the filesystem's `code`, or, with `needed` (bytes), too
  little space to start."""
  reason = "not enough free space" if needed is not None else os.strerror(code).lower()
  space = f"{format_bytes(free_bytes(path))} free" + (
      "" if needed is None else f", about {format_bytes(needed)} needed")
  target = f"{what} to {path}" if what else str(path)
  return errors.WriteError(f"cannot write {target}: {reason} ({space}); {_REMEDIES[code]}")


def require_free_space(path: pathlib.Path, needed: int, what: str) -> None:
  """Raises WriteError, before any of it is written, when `what` (about `needed` bytes)
  would not fit on the filesystem of `path`."""
  if free_bytes(path) < needed:
    raise write_error(path, what, errno.ENOSPC, needed)


@contextlib.contextmanager
def writing(path: pathlib.Path, what: str | None = None) -> Iterator[None]:
  """Turns a full, over-quota or read-only filesystem's error inside the block into a
  WriteError naming `path` and `what` (see `write_error`)."""
  try:
    yield
  except (OSError, ValueError) as e:
    code = storage_errno(e)
    if code is None:
      raise
    raise write_error(path, what, code) from e
