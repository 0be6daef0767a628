"""One trainer per workdir: an advisory lock that the kernel releases when its holder exits
or is killed, so it never stays stuck."""

import contextlib
import fcntl
import os
import pathlib
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from xray_jax import errors, workdir_files


@contextlib.contextmanager
def hold(workdir: pathlib.Path) -> Iterator[None]:
  """Holds the workdir's lock file (process 0) for the block; raises WorkdirBusyError on every
  process at once if another trainer holds it."""
  handle, holder = None, "see process 0's log"
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    handle = (workdir / workdir_files.LOCK).open("a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "unknown"
      handle.close()
      handle = None
    else:
      handle.seek(0)
      handle.truncate()
      handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
      handle.flush()
  locked = int(multihost_utils.broadcast_one_to_all(np.int32(handle is not None)))
  if not locked:
    raise errors.WorkdirBusyError(
        f"{workdir} is in use by another trainer ({holder}): wait for it or stop it, or "
        "choose another --workdir")
  try:
    yield
  finally:
    if handle is not None:
      handle.close()  # Releases the lock.
