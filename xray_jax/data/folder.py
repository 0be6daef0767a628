"""The public folder layout: ROOT/{train,val,test}/{CLASS}/*.{jpeg,jpg,png,dcm}, or a flat
folder of images for data.label_rules to label."""

import dataclasses
import pathlib

from xray_jax import errors
from xray_jax.data.records import Record

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm")


@dataclasses.dataclass(frozen=True)
class FolderDataset:
  """Class names (sorted folder names) and the records of each split found on disk."""

  root: pathlib.Path
  class_names: tuple[str, ...]
  splits: dict[str, list[Record]]


def class_folder_records(split_dir: pathlib.Path, class_names: tuple[str, ...]) -> list[Record]:
  """The images of `split_dir`/{CLASS}/, labelled by the index of CLASS in `class_names`."""
  records = []
  for label, name in enumerate(class_names):
    class_dir = split_dir / name
    if not class_dir.is_dir():
      raise errors.DataError(f"{class_dir}: class folder missing (classes: {class_names})")
    paths = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
      raise errors.DataError(
          f"{class_dir}: no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    records.extend({"path": str(p), "label": label} for p in paths)
  return records


def flat_records(root: pathlib.Path) -> list[Record]:
  """The images directly in `root`, unlabelled (data.label_rules labels them)."""
  paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    raise errors.DataError(f"{root}: no train/ folder and no images (files ending in "
                           f"{', '.join(IMAGE_SUFFIXES)}) in it")
  return [{"path": str(p)} for p in paths]


def load_folder_dataset(root: str | pathlib.Path) -> FolderDataset:
  """Finds the splits under `root`; `train` is required, `val` and `test` are optional."""
  root = pathlib.Path(root).expanduser()
  train_dir = root / "train"
  if not train_dir.is_dir():
    raise errors.DataError(
        f"{train_dir}: not a directory (config.data.dir must hold train/{{CLASS}}/*.jpeg)")
  class_names = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
  if len(class_names) < 2:
    raise errors.DataError(
        f"{train_dir}: expected one folder per class, at least two, found {list(class_names)}")
  splits = {
      split: class_folder_records(root / split, class_names)
      for split in ("train", "val", "test")
      if (root / split).is_dir()
  }
  return FolderDataset(root=root, class_names=class_names, splits=splits)
