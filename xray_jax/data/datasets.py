"""The train / validation / test records of the dataset named by `config.data.source`."""

import dataclasses
import pathlib
from collections.abc import Callable

import ml_collections

from xray_jax import errors
from xray_jax.data import folder, splits
from xray_jax.data.folder import Record


@dataclasses.dataclass(frozen=True)
class Splits:
  class_names: tuple[str, ...]
  train: list[Record]
  val: list[Record]
  test: list[Record]  # Empty when the dataset has no test split.


def load_folder_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path, save: bool
) -> Splits:
  """The folder layout; without a val/ folder, validation is carved from train and the
  choice saved in (or read back from) `workdir`."""
  dataset = folder.load_folder_dataset(data_config.dir)
  train = dataset.splits["train"]
  val = dataset.splits.get("val")
  if val is None:
    train, val = splits.split_train_val(
        train, dataset.root, data_config.val_fraction, data_config.split_seed, workdir, save)
  return Splits(dataset.class_names, train, val, dataset.splits.get("test", []))


# config.data.source -> loader(data_config, workdir, save) -> Splits.
SOURCES: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path, bool], Splits]] = {
    "folder": load_folder_splits,
}


def load_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path, save: bool = True
) -> Splits:
  """Reads the configured dataset. `save`: may write the validation split to `workdir`
  (process 0 of a training job; never an evaluation job)."""
  if data_config.source not in SOURCES:
    raise errors.ConfigError(
        f"config.data.source={data_config.source!r}; expected one of {', '.join(SOURCES)}")
  return SOURCES[data_config.source](data_config, pathlib.Path(workdir), save)
