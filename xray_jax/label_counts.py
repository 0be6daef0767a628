r"""Counts the labels of a csv-source dataset from its tables alone (no image is read): per
split, the images, the patients, and how many images have each finding (multi-label:
present, with uncertain and blank counted apart) or class. Prints a Markdown table.

  python -m xray_jax.label_counts --config=configs/chestxray14.py:lists \
      --config.data.dir=/path/to/ChestX-ray14
"""

import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from xray_jax import cli, errors
from xray_jax.data import csv_source, splits
from xray_jax.data.records import Record

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config of a data.source=csv dataset.",
                                lock_config=True)
flags.DEFINE_string("json", "", "Also write the counts to this JSON file.")


def patients_of(records: Sequence[Record], group_pattern: str) -> list[str]:
  """Each record's patient: its "patient", else the group `group_pattern` finds in its path."""
  return splits.record_patients(records) or splits.match_groups(
      [r["path"] for r in records], group_pattern)[0]


def label_counts(class_names: Sequence[str], records: Sequence[Record]) -> dict[str, dict]:
  """Class name -> images with it (single-label), or -> present, absent, uncertain and
  missing images (multi-label)."""
  labels = np.stack([np.asarray(r["label"], np.float32) for r in records])
  if labels.ndim == 1:
    return {name: {"present": int((labels == i).sum())} for i, name in enumerate(class_names)}
  return {name: {"present": int((column == 1).sum()), "absent": int((column == 0).sum()),
                 "uncertain": int((column == -1).sum()), "missing": int(np.isnan(column).sum())}
          for name, column in zip(class_names, labels.T, strict=True)}


def split_counts(class_names: Sequence[str], found: dict[str, list[Record]],
                 group_pattern: str) -> dict[str, dict]:
  """Split -> images, patients, patients also in another split, images with no finding
  present (multi-label), and `label_counts`."""
  patients = {split: set(patients_of(records, group_pattern))
              for split, records in found.items()}
  counts = {}
  for split, records in found.items():
    elsewhere = set().union(*(p for other, p in patients.items() if other != split))
    counts[split] = {"images": len(records), "patients": len(patients[split]),
                     "shared_patients": len(patients[split] & elsewhere),
                     "labels": label_counts(class_names, records)}
    if np.ndim(records[0]["label"]):
      counts[split]["none_present"] = sum(not np.any(r["label"] == 1) for r in records)
  return counts


def _cell(counts: dict[str, int], images: int) -> str:
  text = f"{counts['present']:,} ({100 * counts['present'] / images:.2f}%)"
  others = [f"{key} {counts[key]:,}" for key in ("uncertain", "missing") if counts.get(key)]
  return ", ".join([text, *others])


def _row(title: str, cells) -> str:
  return f"| {title} | " + " | ".join(cells) + " |"


def format_counts(counts: dict[str, dict]) -> str:
  """The counts of `split_counts` as a Markdown table: a row per class, a column per split."""
  columns = list(counts.values())
  lines = [_row("", counts), "|---" * (len(counts) + 1) + "|",
           _row("images", (f"{c['images']:,}" for c in columns)),
           _row("patients (also in another split)",
                (f"{c['patients']:,} ({c['shared_patients']:,})" for c in columns))]
  if "none_present" in columns[0]:
    lines.append(_row("no finding present", (_cell({"present": c["none_present"]}, c["images"])
                                             for c in columns)))
  lines += [_row(name, (_cell(c["labels"][name], c["images"]) for c in columns))
            for name in columns[0]["labels"]]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  data = FLAGS.config.data
  try:
    if data.source != "csv":
      raise errors.ConfigError(f"config.data.source={data.source!r}: expected csv")
    class_names, _, found = csv_source.read_records(data, require_images=False)
  except errors.XrayError as e:
    sys.exit(f"error: {e}")
  ordered = {split: found[split] for split in csv_source.SPLITS if split in found}
  counts = split_counts(class_names, ordered, data.group_pattern)
  print(format_counts(counts))
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(counts, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)
