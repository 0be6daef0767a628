"""MedMNIST-style npz files: SPLIT_images [N, H, W(, C)] and SPLIT_labels [N] or [N, 1]."""

import pathlib

import ml_collections
import numpy as np

from xray_jax import errors
from xray_jax.data import download, label_rules, splits
from xray_jax.data.records import Record

SPLITS = ("train", "val", "test")


def read_npz(path: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Split -> (images, integer labels [N]) for the splits in the file; train is required."""
  try:
    with np.load(path) as npz:
      found = {split: (npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1))
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
    if labels.size and not 0 <= labels.min() <= labels.max() < len(class_names):
      raise errors.DataError(
          f"{path}: {split}_labels span [{labels.min()}, {labels.max()}]; "
          f"config.data.class_names has {len(class_names)} names")
    found[split] = [{"path": f"{path}/{split}/{i:05d}", "label": int(label), "image": image}
                    for i, (image, label) in enumerate(zip(images, labels, strict=True))]
  return splits.make_splits(class_names, found, path, data_config, workdir)
