"""Training images loaded once, up front, into one file that every grain worker maps.

Decoding and per-image standardization (CLAHE above all) cost far more than augmentation, and
give the same result every epoch. `ImageCache.build` runs them once per image, in parallel
over the pipeline's worker processes, and writes the results as float16 rows of a `.npy` file
in a temporary folder. Workers map that file read-only, so the operating system holds one
copy for the whole process tree, where a cache inside each worker would hold one per worker
and fill only as each worker happened to meet each image.

The building process holds a lock on a file in that folder while it lives. A process killed
before its clean-up (SIGKILL, the OOM killer) leaves its folder behind: the next build in the
same directory removes every such folder whose lock is free.
"""

import contextlib
import fcntl
import math
import os
import pathlib
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence

import grain
import numpy as np
from absl import logging

from xray_jax import interrupts, storage
from xray_jax.data import workers
from xray_jax.data.records import Record

DTYPE = np.float16  # Images in [0, 1]: rounding moves a pixel by at most 2.5e-4.
PREFIX = "xray_jax_images_"  # Of the cache folders.
_OWNER_LOCK = "owner.lock"  # In each folder, locked by the process that built it.
# A folder younger than this may be one whose builder has not locked it yet.
_ORPHAN_MIN_AGE_S = 60


class _LoadOne:
  """One record's loaded image as float16 (a picklable callable for grain's workers)."""

  def __init__(self, load: Callable[[Record], np.ndarray]):
    self.load = load

  def __call__(self, record: Record) -> np.ndarray:
    return self.load(record).astype(DTYPE)


def _allocate(path: pathlib.Path) -> None:
  """Gives the (sparse) file its disk blocks now: writing through a memory map into a full
  filesystem kills the process (SIGBUS) where this raises ENOSPC."""
  with path.open("r+b") as f:
    os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


class ImageCache:
  """Row i holds `load(records[i])`. Pickles as its file's path; each process maps the file
  on first use. The process that built it deletes the file when its copy is collected, or
  at exit."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self._rows: np.ndarray | None = None

  @classmethod
  def build(cls, records: Sequence[Record], load: Callable[[Record], np.ndarray],
            image_shape: tuple[int, ...], num_workers: int, read_threads: int,
            directory: str | None = None) -> "ImageCache":
    """Loads every record with `load` (decode, resize, standardize: an `image_shape` array),
    over `num_workers` worker processes when > 0, into a new file under `directory` (the
    system's temporary folder when None). Raises WriteError first if the file would not
    fit there."""
    shape = (len(records), *image_shape)
    what = f"the cache of {len(records)} training images (config.data.cache_dir)"
    directory = pathlib.Path(directory or tempfile.gettempdir())
    remove_orphans(directory)
    storage.require_free_space(directory, math.prod(shape) * np.dtype(DTYPE).itemsize, what)
    with storage.writing(directory, what):
      folder = pathlib.Path(tempfile.mkdtemp(prefix=PREFIX, dir=directory))
      owner = os.open(folder / _OWNER_LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
      with contextlib.suppress(OSError):  # A filesystem without locks: never swept.
        fcntl.flock(owner, fcntl.LOCK_EX)  # Released by the kernel when this process ends.
      cache = cls(folder / "images.npy")
      interrupts.clean_up_on_exit_now(weakref.finalize(cache, _remove, folder, owner))
      rows = np.lib.format.open_memmap(cache.path, "w+", DTYPE, shape)
      _allocate(cache.path)
    start = time.perf_counter()
    ds = grain.MapDataset.source(records).map(_LoadOne(load)).to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads))
    ds = workers.prefetch(ds, num_workers)
    for i, image in enumerate(ds):
      rows[i] = image
    rows.flush()
    logging.info("Loaded %d training images into %s (%.0f MB) in %.1f s", len(records),
                 cache.path, rows.nbytes / 1e6, time.perf_counter() - start)
    del rows
    return cache

  def __getitem__(self, index: int) -> np.ndarray:
    if self._rows is None:
      self._rows = np.load(self.path, mmap_mode="r")
    return self._rows[index]

  def __getstate__(self) -> dict:
    return {"path": self.path}

  def __setstate__(self, state: dict) -> None:
    self.path, self._rows = state["path"], None


def _remove(folder: pathlib.Path, owner: int) -> None:
  shutil.rmtree(folder, ignore_errors=True)
  os.close(owner)


def remove_orphans(directory: pathlib.Path) -> None:
  """Removes the cache folders in `directory` that outlived the process that built them:
  their owner lock is free (a folder without one is left alone, as is one made within the
  last minute)."""
  for folder in directory.glob(f"{PREFIX}*"):
    try:
      if time.time() - folder.stat().st_mtime < _ORPHAN_MIN_AGE_S:
        continue
      lock = os.open(folder / _OWNER_LOCK, os.O_RDONLY)
    except OSError:  # No lock file, or the folder went away meanwhile.
      continue
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      continue  # Its builder lives (or the filesystem has no locks).
    finally:
      os.close(lock)
    shutil.rmtree(folder, ignore_errors=True)
    logging.info("Removed %s, the image cache of a process that ended without removing it",
                 folder)
