"""Reading CSV tables, plain or gzipped, and joining several on shared key columns."""

import csv
import dataclasses
import gzip
import pathlib
from collections.abc import Collection, Sequence

from xray_jax import errors

Row = dict[str, str]


@dataclasses.dataclass(frozen=True)
class Table:
  """A table's file (or files, when joined), its column names and its rows, each with its
  line in the (first) file."""

  source: str
  columns: tuple[str, ...]
  rows: list[tuple[int, Row]]


def read_table(path: pathlib.Path, keep: Collection[str] | None = None, delimiter: str = ",",
               columns: Sequence[str] = ()) -> Table:
  """The table at `path` (`.gz`: gzipped), its first line naming the columns unless
  `columns` does; rows keep only the columns in `keep` (None: all). A run of spaces is one
  separator when `delimiter` is a space."""
  if not path.is_file():
    raise errors.DataError(f"{path}: no such file")
  try:
    with (gzip.open(path, "rt", newline="", encoding="utf-8-sig") if path.suffix == ".gz"
          else path.open(newline="", encoding="utf-8-sig")) as f:
      reader = csv.reader(f, delimiter=delimiter, skipinitialspace=delimiter == " ")
      names = tuple(columns) or tuple(next(reader, ()))
      wanted = [(i, name) for i, name in enumerate(names) if keep is None or name in keep]
      rows = []
      for fields in reader:
        if not any(fields):
          continue
        if len(fields) < len(names):
          raise errors.DataError(f"{path}, line {reader.line_num}: {len(fields)} fields, "
                                 f"expected {len(names)} ({', '.join(names)})")
        rows.append((reader.line_num, {name: fields[i].strip() for i, name in wanted}))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise errors.DataError(f"{path}: cannot read CSV: {e}") from e
  return Table(str(path), names, rows)


def require_columns(table: Table, columns: Sequence[str], key: str = "") -> None:
  """Raises DataError naming the file and the first of `columns` it lacks (and the config
  key that names the column, if given)."""
  for column in columns:
    if column and column not in table.columns:
      where = f" (config.data.{key})" if key else ""
      raise errors.DataError(f"{table.source}: no column {column!r}{where}; columns: "
                             f"{', '.join(table.columns)}")


def join(tables: Sequence[Table], keys: Sequence[str]) -> tuple[Table, dict[str, int]]:
  """The rows of the first table, each joined with the row of every other table that has
  the same values in the `keys` both have (one row per key in those others); and how many
  rows each other table left out for want of a match; the rows keep their lines in the
  first."""
  joined, dropped = tables[0], {}
  for other in tables[1:]:
    shared = [k for k in keys if k in joined.columns and k in other.columns]
    if not shared:
      raise errors.DataError(
          f"{other.source}: shares none of config.data.csv_join_columns={','.join(keys)!r} "
          f"with {joined.source}")
    index: dict[tuple[str, ...], Row] = {}
    for line, row in other.rows:
      key = tuple(row[k] for k in shared)
      if key in index:
        raise errors.DataError(f"{other.source}, line {line}: a second row for "
                               f"{dict(zip(shared, key, strict=True))}")
      index[key] = row
    rows = [(line, {**index[key], **row}) for line, row in joined.rows
            if (key := tuple(row[k] for k in shared)) in index]
    dropped[other.source] = len(joined.rows) - len(rows)
    columns = joined.columns + tuple(c for c in other.columns if c not in joined.columns)
    joined = Table(f"{joined.source} + {other.source}", columns, rows)
  return joined, dropped
