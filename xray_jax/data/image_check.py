"""Every image decoded once before training, in parallel, so that all unreadable files are
reported together instead of stopping a run at its first validation."""

import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Sequence

import ml_collections
from absl import logging

from xray_jax import errors
from xray_jax.data import images
from xray_jax.data.records import Record
from xray_jax.data.splits import Splits

MODES = ("stop", "skip", "off")


def unreadable_images(records: Sequence[Record], image_size: int,
                      dicom_multiframe: str) -> dict[str, str]:
  """Path -> reason for each file record that does not decode (records that carry their
  pixels, from npz or TFDS, were checked when they were prepared)."""
  def problem(record: Record) -> str | None:
    try:
      images.load_image(record["path"], image_size, dicom_multiframe)
    except errors.DataError as e:
      return str(e)
    return None

  files = [r for r in records if "image" not in r]
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    found = pool.map(problem, files)  # PIL and pydicom decode outside the GIL.
    return {r["path"]: reason for r, reason in zip(files, found, strict=True) if reason}


def check_splits(splits: Splits, data_config: ml_collections.ConfigDict) -> Splits:
  """Decodes the train and validation images; by `data.check_images`, stops on unreadable
  ones (listing all of them), leaves them out (listing them), or does not look."""
  if data_config.check_images == "off":
    return splits
  started = time.perf_counter()
  bad = unreadable_images([*splits.train, *splits.val], data_config.image_size,
                          data_config.dicom_multiframe)
  logging.info("Checked %d images in %.1f s: %d unreadable", len(splits.train) + len(splits.val),
               time.perf_counter() - started, len(bad))
  if not bad:
    return splits
  listing = "; ".join(bad.values())
  if data_config.check_images == "stop":
    raise errors.DataError(
        f"{len(bad)} images cannot be read (fix or remove them, or set "
        f"config.data.check_images=skip to train without them): {listing}")
  logging.warning("Leaving out %d unreadable images: %s", len(bad), listing)
  keep = lambda records: [r for r in records if r.get("path") not in bad]
  return dataclasses.replace(splits, train=keep(splits.train), val=keep(splits.val))
