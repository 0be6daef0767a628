"""A stratified, seeded validation split, saved in the workdir so evaluation reuses it."""

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from xray_jax import errors, files
from xray_jax.data.folder import Record

SPLIT_FILE = "data_split.json"


@dataclasses.dataclass(frozen=True)
class Splits:
  """A dataset's class names and the records of its train, validation and test splits."""

  class_names: tuple[str, ...]
  train: list[Record]
  val: list[Record]
  test: list[Record]  # Empty when the dataset has no test split.


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
  payload = {"val_fraction": fraction, "split_seed": seed,
             "val": sorted(_relative(r, root) for r in val)}
  files.write_atomically(path, json.dumps(payload, indent=1))
  return train, val


def _relative(record: Record, root: pathlib.Path) -> str:
  return pathlib.Path(record["path"]).relative_to(root).as_posix()


def make_splits(
    class_names: tuple[str, ...], found: dict[str, list[Record]], root: pathlib.Path,
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path, save: bool,
) -> Splits:
  """Splits from those a source holds (train required; val, test optional). Without val,
  validation is carved from train (`data.val_fraction`, `data.split_seed`) and saved in
  `workdir` by record path relative to `root`."""
  train, val = found["train"], found.get("val")
  if val is None:
    train, val = split_train_val(
        train, root, data_config.val_fraction, data_config.split_seed, workdir, save)
  return Splits(class_names, train, val, found.get("test", []))
