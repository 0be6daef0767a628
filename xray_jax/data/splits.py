"""A stratified, seeded validation split, saved in the workdir so evaluation reuses it."""

import json
import pathlib
from collections.abc import Sequence

import numpy as np

from xray_jax import errors
from xray_jax.data.folder import Record

SPLIT_FILE = "data_split.json"


def stratified_split(
    records: Sequence[Record], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
  """Moves `fraction` of each class (at least one example) from train to validation."""
  rng = np.random.default_rng(seed)
  labels = np.array([r["label"] for r in records])
  val_indices = []
  for label in np.unique(labels):
    indices = np.flatnonzero(labels == label)
    count = max(1, round(fraction * len(indices)))
    if count >= len(indices):
      raise errors.DataError(
          f"class {label} has {len(indices)} training images: too few to hold out "
          f"data.val_fraction={fraction}")
    val_indices.extend(rng.choice(indices, size=count, replace=False).tolist())
  is_val = np.zeros(len(records), bool)
  is_val[val_indices] = True
  train = [r for r, v in zip(records, is_val, strict=True) if not v]
  val = [r for r, v in zip(records, is_val, strict=True) if v]
  return train, val


def split_train_val(
    records: Sequence[Record], root: pathlib.Path, fraction: float, seed: int,
    workdir: pathlib.Path, save: bool = True,
) -> tuple[list[Record], list[Record]]:
  """Splits train into train and validation, reusing the split saved in `workdir` if any.

  A new split is written to `workdir` when `save` (on process 0 of a multi-host job).
  """
  path = workdir / SPLIT_FILE
  if path.exists():
    saved = set(json.loads(path.read_text())["val"])
    val = [r for r in records if _relative(r, root) in saved]
    if len(val) != len(saved):
      raise errors.DataError(
          f"{path}: {len(saved) - len(val)} validation images are no longer under {root}")
    train = [r for r in records if _relative(r, root) not in saved]
    return train, val
  train, val = stratified_split(records, fraction, seed)
  if not save:
    return train, val
  workdir.mkdir(parents=True, exist_ok=True)
  payload = {"val_fraction": fraction, "split_seed": seed,
             "val": sorted(_relative(r, root) for r in val)}
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(payload, indent=1))
  tmp.replace(path)
  return train, val


def _relative(record: Record, root: pathlib.Path) -> str:
  return pathlib.Path(record["path"]).relative_to(root).as_posix()
