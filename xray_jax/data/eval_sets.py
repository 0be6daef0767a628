"""Named evaluation sets beside validation (`config.data.eval_sets`), e.g. an external set
from a later acquisition: evaluated at every evaluation step of training, and by name in the
evaluation job.

The spec is `NAME=WHERE[,NAME=WHERE...]`: WHERE is `test` (the source's test split) or a
folder holding one subfolder per class, named as the run's classes.
"""

import pathlib
import re

from xray_jax import errors
from xray_jax.data import folder
from xray_jax.data.records import Record
from xray_jax.data.splits import Splits

RESERVED = ("train", "val")  # Names of the splits the trainer already has.
_NAME = re.compile(r"[A-Za-z][\w-]*")


def parse(spec: str) -> dict[str, str]:
  """{name: where} of `config.data.eval_sets`, in order; ConfigError naming the key."""
  found = {}
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, _, where = item.partition("=")
    name, where = name.strip(), where.strip()
    problem = ("expected NAME=test or NAME=FOLDER" if not where
               else f"{name!r} is taken by a split" if name in RESERVED
               else f"{name!r} is not a name (letters, digits, _ and -)"
               if not _NAME.fullmatch(name)
               else f"{name!r} is named twice" if name in found else None)
    if problem:
      raise errors.ConfigError(f"config.data.eval_sets={spec!r}: {problem}")
    found[name] = where
  return found


def _folder_records(where: str, class_names: tuple[str, ...]) -> list[Record]:
  root = pathlib.Path(where).expanduser()
  if not root.is_dir():
    raise errors.DataError(f"config.data.eval_sets: {root} is not a directory")
  return folder.class_folder_records(root, class_names)


def set_records(name: str, where: str, splits: Splits) -> list[Record]:
  """The records of the set `name`=`where`, labelled with the classes of `splits`."""
  if where != "test":
    return _folder_records(where, splits.class_names)
  if not splits.test:
    raise errors.DataError(
        f"config.data.eval_sets: {name}=test, but the data source has no test split")
  return list(splits.test)


def load(spec: str, splits: Splits) -> dict[str, list[Record]]:
  """The records of each named set of `spec`."""
  return {name: set_records(name, where, splits) for name, where in parse(spec).items()}
