"""A stratified, seeded, patient-level validation split, saved in the workdir so evaluation
reuses it."""

import collections
import dataclasses
import json
import pathlib
import re
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from xray_jax import errors
from xray_jax import workdir as workdir_lib
from xray_jax.data.records import Record


@dataclasses.dataclass(frozen=True)
class Splits:
  """A dataset's class names and the records of its train, validation and test splits."""

  class_names: tuple[str, ...]
  train: list[Record]
  val: list[Record]
  test: list[Record]  # Empty when the dataset has no test split.
  # A validation split carved from train just now, for the trainer to record in the
  # workdir (None when it was read back from there, or the source has its own).
  new_split: dict | None = None


def match_groups(names: Sequence[str], pattern: str) -> tuple[list[str], int]:
  """The group of each name: the first group of `pattern`'s first match in it (the patient
  id), else the name itself, so an unmatched file is a patient of its own; and how many
  names did not match."""
  regex = re.compile(pattern)
  groups, unmatched = [], 0
  for name in names:
    match = regex.search(name)
    if match and match.group(1):
      groups.append(match.group(1))
    else:
      groups.append(name)
      unmatched += 1
  return groups, unmatched


def patient_groups(names: Sequence[str], pattern: str) -> list[str]:
  """`match_groups` for a validation split, saying in the log what the unmatched mean."""
  groups, unmatched = match_groups(names, pattern)
  if names and unmatched == len(names):
    logging.warning(
        "none of the %d file paths matches data.group_pattern=%r: each image is its own "
        "group, so the validation split is per image (right when every patient has one "
        "image; otherwise a patient's images may be on both sides)",
        len(names), pattern)
  elif unmatched:
    logging.info("%d of %d file paths match no data.group_pattern=%r: each is its own group",
                 unmatched, len(names), pattern)
  return groups


def record_patients(records: Sequence[Record]) -> list[str] | None:
  """The "patient" of each record, where the source gave every record one; else None."""
  if records and all("patient" in r for r in records):
    return [r["patient"] for r in records]
  return None


def _stratum(label) -> int:
  """The class a record is stratified by: its label, or for a multi-label vector whether
  any finding is present (1; uncertain -1 and missing NaN count as absent)."""
  return int(np.any(np.asarray(label) == 1)) if np.ndim(label) else label


def _group_labels(labels: Sequence[int], groups: Sequence[str]) -> dict[str, int]:
  """Each group's most frequent label (the lowest on ties), by which groups are stratified."""
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for label, group in zip(labels, groups, strict=True):
    counts[group][label] += 1
  return {group: min(c, key=lambda label: (-c[label], label)) for group, c in counts.items()}


def stratified_split(
    records: Sequence[Record], groups: Sequence[str], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
  """Moves whole groups to validation, about `fraction` of each class's images (at least one
  group per class), so that no group has records on both sides.

  Groups are stratified by their most frequent label (multi-label: finding present or not)
  and visited in a seeded random order; each is taken when it brings the class's validation
  count closer to its target.
  """
  rng = np.random.default_rng(seed)
  labels = [_stratum(r["label"]) for r in records]
  sizes = collections.Counter(groups)
  by_label: dict[int, list[str]] = collections.defaultdict(list)
  for group, label in sorted(_group_labels(labels, groups).items()):
    by_label[label].append(group)
  val_groups = set()
  for label, members in sorted(by_label.items()):
    images = sum(sizes[g] for g in members)
    target = max(1, round(fraction * images))
    taken = 0
    for group in rng.permutation(members):
      if abs(taken + sizes[group] - target) < abs(taken - target) or not taken:
        val_groups.add(group)
        taken += sizes[group]
    if all(g in val_groups for g in members):
      raise errors.DataError(
          f"class {label} has {images} training images in {len(members)} groups (patients): "
          f"too few to hold out data.val_fraction={fraction}")
  is_val = [g in val_groups for g in groups]
  train = [r for r, v in zip(records, is_val, strict=True) if not v]
  val = [r for r, v in zip(records, is_val, strict=True) if v]
  return train, val


def split_train_val(
    records: Sequence[Record], root: pathlib.Path, data_config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
) -> tuple[list[Record], list[Record], dict | None]:
  """Splits train into train and validation by patient, reusing the split recorded in
  `workdir` if any; also returns a new split's record (None when reused)."""
  path = workdir / workdir_lib.SPLIT
  names = [_relative(r, root) for r in records]
  if path.exists():
    saved_file = json.loads(path.read_text())
    if not {"group_pattern", "patient_column"} & saved_file.keys():
      logging.warning("%s was made per image, before patient grouping: patients may be on "
                      "both sides of it", path)
    saved = set(saved_file["val"])
    is_val = [name in saved for name in names]
    if sum(is_val) != len(saved):
      raise errors.DataError(
          f"{path}: {len(saved) - sum(is_val)} validation images are no longer under {root}")
    return ([r for r, v in zip(records, is_val, strict=True) if not v],
            [r for r, v in zip(records, is_val, strict=True) if v], None)
  fraction, seed = data_config.val_fraction, data_config.split_seed
  groups = record_patients(records)
  if groups is not None:
    grouped_by = {"patient_column": data_config.get("patient_column", "")}
  else:
    groups = patient_groups(names, data_config.group_pattern)
    grouped_by = {"group_pattern": data_config.group_pattern}
  train, val = stratified_split(records, groups, fraction, seed)
  val_names = {_relative(r, root) for r in val}
  val_groups = sorted({g for g, name in zip(groups, names, strict=True) if name in val_names})
  logging.info("validation split: %d of %d groups (patients), %d of %d images",
               len(val_groups), len(set(groups)), len(val), len(records))
  record = {"val_fraction": fraction, "split_seed": seed, **grouped_by,
            "num_groups": len(set(groups)),
            "val_groups": val_groups, "val": sorted(val_names)}
  return train, val, record


def saved_validation(workdir: pathlib.Path) -> list[str] | None:
  """The validation images recorded in `workdir` (None: the source had its own split)."""
  path = pathlib.Path(workdir) / workdir_lib.SPLIT
  return json.loads(path.read_text())["val"] if path.is_file() else None


def _relative(record: Record, root: pathlib.Path) -> str:
  return pathlib.Path(record["path"]).relative_to(root).as_posix()


def make_splits(
    class_names: tuple[str, ...], found: dict[str, list[Record]], root: pathlib.Path,
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path,
) -> Splits:
  """Splits from those a source holds (train required; val, test optional). Without val,
  validation is carved from train by patient (the records' "patient" where they all have
  one, else `data.group_pattern` on the record path relative to `root`; `data.val_fraction`,
  `data.split_seed`), or read back from `workdir`."""
  train, val, new_split = found["train"], found.get("val"), None
  if val is None:
    train, val, new_split = split_train_val(train, root, data_config, workdir)
  return Splits(class_names, train, val, found.get("test", []), new_split)
