"""A training workdir: the names of its files, writing them atomically, and the lock that
lets one trainer at a time use it (advisory, released by the kernel when its holder exits or
is killed, so it never stays stuck)."""

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

from xray_jax import errors, interrupts, storage

CONFIG = "config.json"  # The resolved config the run trains with.
CLASSES = "classes.json"  # Class names in label order.
RUN = "run.json"  # What later jobs need to know of the run: its length in steps.
SPLIT = "data_split.json"  # The validation images carved from train, and their patients.
METRICS = "metrics.jsonl"  # Train and validation metrics, one JSON object per line.
TENSORBOARD = "tensorboard"  # The same metrics as TensorBoard events.
CHECKPOINTS = "checkpoints"  # Orbax checkpoints, one folder per step.
DAMAGED_CHECKPOINTS = "checkpoints_damaged"  # Damaged checkpoints set aside, never deleted.
EVAL = "eval"  # Reports, predictions and figures of evaluation jobs.
LOCK = "trainer.lock"  # Held by the running trainer.


def write_atomically(path: pathlib.Path, content: str | bytes) -> None:
  """Writes text or bytes to `path` through a temporary file and a rename, so a reader (a
  watching evaluator, a resumed run) never sees a half-written file. A full or read-only
  filesystem raises WriteError and leaves `path` as it was."""
  tmp = path.with_name(path.name + ".tmp")
  with storage.writing(path), interrupts.exit_deferred():  # Ctrl-C leaves no temporary file.
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
      if isinstance(content, bytes):
        tmp.write_bytes(content)
      else:
        tmp.write_text(content)
    except OSError:
      if tmp.exists():
        tmp.unlink()  # Cut short: it would only hold on to space.
      raise
    tmp.replace(path)


@contextlib.contextmanager
def hold(workdir: pathlib.Path) -> Iterator[None]:
  """One trainer per workdir: holds the workdir's lock file (process 0) for the block;
  raises WorkdirBusyError on every process at once if another trainer holds it."""
  handle, holder = None, "see process 0's log"
  if jax.process_index() == 0:
    with storage.writing(workdir / LOCK, "the trainer's lock"):
      workdir.mkdir(parents=True, exist_ok=True)
      handle = (workdir / LOCK).open("a+")
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
