"""MedMNIST-style npz files: SPLIT_images [N, H, W(, C)] and SPLIT_labels: class indices
[N] or [N, 1], or for findings (config.task=multilabel, e.g. ChestMNIST) [N, K]."""

import pathlib

import ml_collections
import numpy as np

from xray_jax import errors
from xray_jax.data import download, label_rules, splits
from xray_jax.data.records import Record

SPLITS = ("train", "val", "test")


def _label_array(labels: np.ndarray) -> np.ndarray:
  """[N] or [N, 1] -> class indices [N]; [N, K > 1] (findings) as they are."""
  return labels.reshape(-1) if labels.ndim == 1 or labels.shape[1:] == (1,) else labels


def read_npz(path: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Split -> (images, labels: class indices [N], or findings [N, K]) for the splits in the
  file; train is required."""
  try:
    with np.load(path) as npz:
      found = {split: (npz[f"{split}_images"], _label_array(npz[f"{split}_labels"]))
               for split in SPLITS if f"{split}_images" in npz.files}
      keys = npz.files
  except (OSError, ValueError, KeyError) as e:
    raise errors.DataError(f"{path}: cannot read npz file: {e}") from e
  if "train" not in found:
    raise errors.DataError(f"{path}: no train_images array (arrays: {', '.join(keys)})")
  for split, (images, labels) in found.items():
    if len(images) != len(labels):
      raise errors.DataError(
          f"{path}: {len(images)} {split}_images but {len(labels)} {split}_labels")
  return found


def _check_labels(path: pathlib.Path, split: str, labels: np.ndarray,
                  class_names: tuple[str, ...]) -> None:
  """DataError unless `labels` are class indices of `class_names`, or one column per name
  of 1 (present), 0 (absent), -1 (uncertain) or NaN (missing)."""
  if labels.ndim == 1:
    if labels.size and not 0 <= labels.min() <= labels.max() < len(class_names):
      raise errors.DataError(
          f"{path}: {split}_labels span [{labels.min()}, {labels.max()}]; "
          f"config.data.class_names has {len(class_names)} names")
    return
  if labels.ndim != 2 or labels.shape[1] != len(class_names):
    raise errors.DataError(
        f"{path}: {split}_labels of shape {labels.shape}: findings [N, K] (config.task="
        f"multilabel) need K names in config.data.class_names, which has {len(class_names)}")
  values = labels.astype(np.float32)
  known = np.isin(values, (1.0, 0.0, -1.0)) | np.isnan(values)
  if not known.all():
    raise errors.DataError(
        f"{path}: {split}_labels hold {values[~known][0]}; findings are 1 (present), "
        "0 (absent), -1 (uncertain) or NaN (missing)")


def _record_label(label: np.ndarray) -> int | np.ndarray:
  """A row of SPLIT_labels as a record's label: the class index, or findings as float32."""
  return int(label) if label.ndim == 0 else label.astype(np.float32)


def load_npz_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> splits.Splits:
  """The npz file at (or downloaded from) `data.npz_path`; records carry the image arrays.

  Record paths are NPZ_PATH/SPLIT/INDEX. Without val arrays, validation is carved from train.
  """
  path = download.fetch(data_config.npz_path, data_config.checksum, data_config.download_dir,
                        data_config.mirror_url)
  class_names = label_rules.parse_class_names(data_config.class_names)
  found: dict[str, list[Record]] = {}
  for split, (images, labels) in read_npz(path).items():
    _check_labels(path, split, labels, class_names)
    found[split] = [{"path": f"{path}/{split}/{i:05d}", "label": _record_label(label),
                     "image": image}
                    for i, (image, label) in enumerate(zip(images, labels, strict=True))]
  return splits.make_splits(class_names, found, path, data_config, workdir)
