"""Class names from config, and labels from file paths instead of class folders."""

import pathlib
from collections.abc import Sequence

from xray_jax import errors
from xray_jax.data.records import Record


def parse_class_names(spec: str) -> tuple[str, ...]:
  """`config.data.class_names`, "NORMAL,PNEUMONIA" -> the names of labels 0, 1, ..."""
  names = tuple(name.strip() for name in spec.split(",") if name.strip())
  if len(names) < 2:
    raise errors.ConfigError(
        f"config.data.class_names={spec!r}: expected at least two comma-separated names")
  return names


def parse_label_rules(spec: str) -> list[tuple[str, str]]:
  """`"NORMAL=/NORMAL/,BACTERIAL=_bacteria_"` -> [(class name, path substring), ...]."""
  rules = []
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, sep, pattern = item.partition("=")
    if not sep or not name.strip() or not pattern:
      raise errors.ConfigError(
          f"config.data.label_rules: {item!r} is not CLASS=SUBSTRING (in {spec!r})")
    rules.append((name.strip(), pattern))
  if len({name for name, _ in rules}) < 2:
    raise errors.ConfigError(f"config.data.label_rules={spec!r}: expected at least two classes")
  return rules


def apply_label_rules(
    records: Sequence[Record], rules: list[tuple[str, str]], root: pathlib.Path
) -> list[Record]:
  """Relabels each record with the first class whose substring occurs in its path under
  `root` (written with '/' and a leading '/'); class indices follow the rules' order."""
  names = list(dict.fromkeys(name for name, _ in rules))
  relabelled = []
  for record in records:
    path = "/" + pathlib.Path(record["path"]).relative_to(root).as_posix()
    match = next((name for name, pattern in rules if pattern in path), None)
    if match is None:
      raise errors.DataError(
          f"{record['path']}: matches no rule of config.data.label_rules "
          f"({', '.join(f'{n}={p}' for n, p in rules)})")
    relabelled.append({**record, "label": names.index(match)})
  return relabelled


def class_index(text: str, num_classes: int) -> int | None:
  """`text` as a label, an integer in [0, num_classes); None when it is not one."""
  try:
    label = int(text)
  except ValueError:
    return None
  return label if 0 <= label < num_classes else None
