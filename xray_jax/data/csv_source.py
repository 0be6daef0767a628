"""Images listed in CSV tables (`data.source="csv"`): ChestX-ray14, CheXpert, MIMIC-CXR-JPG
and other sets that ship a table of image paths and labels.

A record's label is the integer class of `data.label_column` (single-label) or, with that
field empty, a float32 vector over `data.class_names` (multi-label): 1 present, 0 absent,
-1 uncertain, NaN missing. Records carry "patient" when `data.patient_column` names one.
"""

import math
import os
import pathlib
import string
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

from xray_jax import errors
from xray_jax.data import csv_tables, label_rules, splits
from xray_jax.data.csv_tables import Row, Table
from xray_jax.data.records import Record

SPLITS = ("train", "val", "test")
FINDING_VALUES = (1.0, 0.0, -1.0)  # Present, absent, uncertain; a blank cell is missing.

# The split of a row (None: left out), given its image path and where it is, for errors.
Splitter = Callable[[Row, str, str], str | None]


def parse_split_map(spec: str, key: str) -> dict[str, str]:
  """`"train=A,test=B"` -> {"train": "A", "test": "B"}: each split of train, val, test at
  most once, train required."""
  found: dict[str, str] = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    split, sep, value = (part.strip() for part in item.partition("="))
    if not sep or split not in SPLITS or split in found or not value:
      raise errors.ConfigError(
          f"config.data.{key}={spec!r}: {item!r} is not SPLIT=VALUE with SPLIT one of "
          f"{', '.join(SPLITS)} (each once)")
    found[split] = value
  if "train" not in found:
    raise errors.ConfigError(f"config.data.{key}={spec!r}: expected a train=... entry")
  return found


def table_files(data_config: ml_collections.ConfigDict) -> dict[str | None, list[str]]:
  """`data.csv_files` as split -> [its table] (SPLIT=FILE,...), or None -> [files to join]."""
  spec = data_config.csv_files
  if "=" in spec:
    return {split: [name] for split, name in parse_split_map(spec, "csv_files").items()}
  files = [name.strip() for name in spec.split(",") if name.strip()]
  if not files:
    raise errors.ConfigError(f"config.data.csv_files={spec!r}: expected FILE, FILE,FILE "
                             "(joined) or SPLIT=FILE,... (a table per split)")
  return {None: files}


def template_columns(template: str) -> list[str]:
  """The columns that the image path template `data.image_path` reads."""
  try:
    fields = [field for _, field, _, _ in string.Formatter().parse(template)
              if field is not None]
  except ValueError as e:
    raise errors.ConfigError(f"config.data.image_path={template!r}: {e}") from None
  if not fields or not all(fields):
    raise errors.ConfigError(f"config.data.image_path={template!r}: expected a path with "
                             "{COLUMN} fields, e.g. '{Path}' or 'images/{Image Index}'")
  return fields


def check_layout(data_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for `source=csv` fields that cannot work together."""
  per_file = None not in table_files(data_config)
  template_columns(data_config.image_path)
  ways = [key for key, given in (("csv_files", per_file),
                                 ("split_column", bool(data_config.split_column)),
                                 ("split_lists", bool(data_config.split_lists))) if given]
  if len(ways) > 1:
    raise errors.ConfigError(f"config.data.{ways[1]}: the split is already given by "
                             f"config.data.{ways[0]}; set one of them")
  if data_config.split_column:
    parse_split_map(data_config.split_values, "split_values")
  if data_config.split_lists:
    parse_split_map(data_config.split_lists, "split_lists")
  if data_config.view_column and not data_config.views:
    raise errors.ConfigError(f"config.data.views='': expected the values of "
                             f"data.view_column={data_config.view_column!r} to keep")
  if len(data_config.csv_delimiter) != 1:
    raise errors.ConfigError(f"config.data.csv_delimiter={data_config.csv_delimiter!r}: "
                             "expected one character")


def check_csv_config(data_config: ml_collections.ConfigDict, task: str) -> None:
  """`check_layout`, and the labels against `config.task`."""
  check_layout(data_config)
  multilabel = task == "multilabel"
  if multilabel == bool(data_config.label_column):
    raise errors.ConfigError(
        f"config.data.label_column={data_config.label_column!r}: expected empty with "
        "config.task='multilabel' (findings from the data.class_names columns or "
        "data.findings_column), else the column of the integer class")


def _label_columns(data_config: ml_collections.ConfigDict,
                   class_names: Sequence[str]) -> list[tuple[str, str]]:
  """(column, config key naming it) of the label columns."""
  if data_config.label_column:
    return [(data_config.label_column, "label_column")]
  if data_config.findings_column:
    return [(data_config.findings_column, "findings_column")]
  return [(name, "class_names") for name in class_names]


def _read_tables(data_config: ml_collections.ConfigDict,
                 columns: list[tuple[str, str]]) -> dict[str | None, Table]:
  """The tables of `data.csv_files`, joined where several make one, checked for `columns`."""
  root = pathlib.Path(data_config.dir).expanduser()
  keys = [k.strip() for k in data_config.csv_join_columns.split(",") if k.strip()]
  keep = {column for column, _ in columns} | set(keys)
  header = [c.strip() for c in data_config.csv_columns.split(",")] if data_config.csv_columns \
      else ()
  tables = {}
  for split, files in table_files(data_config).items():
    read = [csv_tables.read_table(root / pathlib.Path(name).expanduser(), keep,
                                  data_config.csv_delimiter, header) for name in files]
    table, dropped = csv_tables.join(read, keys)
    for source, count in dropped.items():
      if count:
        logging.info("%d rows of %s have no match in %s: left out", count, files[0], source)
    for column, key in columns:
      csv_tables.require_columns(table, [column], key)
    tables[split] = table
  return tables


def _finding_value(text: str, column: str, where: str) -> float:
  """A multi-label cell: 1, 0, -1 (also written 1.0, 0.0, -1.0) or blank (NaN)."""
  if not text:
    return math.nan
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if value not in FINDING_VALUES:
    raise errors.DataError(f"{where}: column {column!r} = {text!r}; expected 1, 0, -1 "
                           "(present, absent, uncertain) or blank (missing)")
  return value


def _label(row: Row, class_names: Sequence[str], data_config: ml_collections.ConfigDict,
           where: str) -> int | np.ndarray:
  """The record label of `row`: an integer class, or a float32 vector of findings."""
  if data_config.label_column:
    value = row[data_config.label_column]
    label = label_rules.class_index(value, len(class_names))
    if label is None:
      raise errors.DataError(f"{where}: column {data_config.label_column!r} = {value!r}; "
                             f"expected an integer in [0, {len(class_names)})")
    return label
  if data_config.findings_column:
    cell = row[data_config.findings_column]
    present = {name.strip() for name in cell.split(data_config.findings_separator)}
    return (np.array([name in present for name in class_names], np.float32) if cell
            else np.full(len(class_names), np.nan, np.float32))
  return np.array([_finding_value(row[name], name, where) for name in class_names],
                  np.float32)


def _check_findings_named(table: Table, class_names: Sequence[str],
                          data_config: ml_collections.ConfigDict) -> None:
  """Raises DataError for a class name that no row of `data.findings_column` lists (a
  misspelt name would otherwise be a finding that is always absent)."""
  column, separator = data_config.findings_column, data_config.findings_separator
  seen = {name.strip() for _, row in table.rows for name in row[column].split(separator)}
  missing = [name for name in class_names if name not in seen]
  if missing and table.rows:
    raise errors.DataError(
        f"{table.source}: no row of column {column!r} lists {', '.join(missing)} "
        f"(config.data.class_names); it lists {', '.join(sorted(seen - {''}))}")


def _read_lists(data_config: ml_collections.ConfigDict) -> dict[str, str]:
  """Image file name -> split, from the list files of `data.split_lists` (the first field of
  each line names an image)."""
  root = pathlib.Path(data_config.dir).expanduser()
  split_of: dict[str, str] = {}
  for split, name in parse_split_map(data_config.split_lists, "split_lists").items():
    path = root / pathlib.Path(name).expanduser()
    try:
      lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
      raise errors.DataError(f"{path}: cannot read list (config.data.split_lists): {e}") \
          from e
    for line in filter(None, (line.split() for line in lines)):
      if split_of.setdefault(line[0], split) != split:
        raise errors.DataError(f"{path}: {line[0]} is also in the {split_of[line[0]]} list")
  return split_of


def _splitter(data_config: ml_collections.ConfigDict) -> Splitter:
  """The split of a row of a joined table, given its image path and where it is (for
  errors): by `data.split_column`, by the list files (None when in none), else train."""
  if data_config.split_lists:
    lists = _read_lists(data_config)
    return lambda row, image, where: lists.get(pathlib.PurePosixPath(image).name)
  column = data_config.split_column
  if not column:
    return lambda row, image, where: "train"
  by_value = {v: s for s, v in parse_split_map(data_config.split_values, "split_values").items()}

  def split_by_column(row: Row, image: str, where: str) -> str:
    if row[column] not in by_value:
      raise errors.DataError(
          f"{where}: column {column!r} = {row[column]!r}; expected one of "
          f"{', '.join(by_value)} (config.data.split_values)")
    return by_value[row[column]]
  return split_by_column


def _table_records(table: Table, split: str | None, class_names: Sequence[str],
                   image_root: pathlib.Path, data_config: ml_collections.ConfigDict,
                   splitter: Splitter) -> dict[str, list[Record]]:
  """Split -> the records of the rows of `table` that pass the view filter (all in `split`
  when given)."""
  views = {v.strip() for v in data_config.views.split(",")}
  found: dict[str, list[Record]] = {}
  other_views = unlisted = 0
  for line, row in table.rows:
    if data_config.view_column and row[data_config.view_column] not in views:
      other_views += 1
      continue
    where = f"{table.source}, line {line}"
    try:
      image = data_config.image_path.format_map(row)
    except (ValueError, IndexError, KeyError) as e:
      raise errors.ConfigError(f"config.data.image_path={data_config.image_path!r}: {e}") \
          from None
    row_split = split or splitter(row, image, where)
    if row_split is None:
      unlisted += 1
      continue
    record = {"path": str(image_root / image),
              "label": _label(row, class_names, data_config, f"{where} ({image})")}
    if data_config.patient_column:
      record["patient"] = row[data_config.patient_column]
      if not record["patient"]:
        raise errors.DataError(f"{where} ({image}): column {data_config.patient_column!r} "
                               "(config.data.patient_column) is blank")
    found.setdefault(row_split, []).append(record)
  if other_views:
    logging.info("%s: %d rows left out, their %s not one of %s", table.source, other_views,
                 data_config.view_column, data_config.views)
  if unlisted:
    logging.info("%s: %d rows in none of data.split_lists, left out", table.source, unlisted)
  return found


def _require_images(records: Sequence[Record], source: str) -> None:
  missing = [r["path"] for r in records if not os.path.isfile(r["path"])]
  if missing:
    raise errors.DataError(f"{missing[0]}: no such image, listed in {source} ({len(missing)} "
                           f"of {len(records)} listed images are missing)")


def read_records(data_config: ml_collections.ConfigDict, require_images: bool = True
                 ) -> tuple[tuple[str, ...], pathlib.Path, dict[str, list[Record]]]:
  """The class names, the folder image paths start from, and the records of each split the
  tables give (by file, column or list files; else all train); with `require_images`, a
  listed image that is not a file is an error."""
  class_names = label_rules.parse_class_names(data_config.class_names)
  check_layout(data_config)
  columns = [*((c, "image_path") for c in template_columns(data_config.image_path)),
             *_label_columns(data_config, class_names),
             *((data_config[key], key) for key in ("patient_column", "view_column",
                                                   "split_column") if data_config[key])]
  splitter = _splitter(data_config)
  image_root = pathlib.Path(os.path.abspath(
      pathlib.Path(data_config.dir).expanduser() / data_config.image_root))
  found: dict[str, list[Record]] = {}
  for split, table in _read_tables(data_config, columns).items():
    if data_config.findings_column and not data_config.label_column:
      _check_findings_named(table, class_names, data_config)
    for row_split, records in _table_records(table, split, class_names, image_root,
                                             data_config, splitter).items():
      if require_images:
        _require_images(records, table.source)
      found.setdefault(row_split, []).extend(records)
  if not found.get("train"):
    raise errors.DataError(f"{data_config.csv_files}: no training rows (after data.views "
                           "and the split)")
  logging.info("csv: %s", ", ".join(f"{s} {len(found[s])}" for s in SPLITS if s in found))
  return class_names, image_root, found


def load_csv_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> splits.Splits:
  """`read_records`, with validation carved from train by patient when the tables give
  none."""
  class_names, image_root, found = read_records(data_config)
  return splits.make_splits(class_names, found, image_root, data_config, workdir)
