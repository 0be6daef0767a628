"""The train / validation / test records of the dataset named by `config.data.source`."""

import pathlib
from collections.abc import Callable

import ml_collections

from xray_jax import errors
from xray_jax.data import csv_source, dicom_csv, folder, label_rules, npz, splits
from xray_jax.data.splits import Splits

# The TFDS datasets of the `tfds` source, which xray_jax.data.tfds_builders registers.
TFDS_BUILDERS = ("chest_xray_pneumonia", "pneumonia_mnist")


def load_folder_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> Splits:
  """The folder layout, labelled by class folder or by `data.label_rules` (with rules, a
  folder of images without train/ is all train); without a val/ folder, validation is
  carved from train (or read back from the split recorded in) `workdir`."""
  root = pathlib.Path(data_config.dir).expanduser()
  if data_config.label_rules and not (root / "train").is_dir():
    class_names, found = (), {"train": folder.flat_records(root)}
  else:
    dataset = folder.load_folder_dataset(root)
    class_names, found = dataset.class_names, dict(dataset.splits)
  if data_config.label_rules:
    rules = label_rules.parse_label_rules(data_config.label_rules)
    class_names = tuple(dict.fromkeys(name for name, _ in rules))
    found = {split: label_rules.apply_label_rules(records, rules, root)
             for split, records in found.items()}
  return splits.make_splits(class_names, found, root, data_config, workdir)


def load_auto_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> Splits:
  """The folder layout in `data.dir` when one is given (read in place), else the TFDS
  dataset (downloaded and prepared on first use).

  Both name chest_xray_pneumonia images by their path under the layout's root, so a saved
  validation split means the same images either way.
  """
  if data_config.dir:
    return load_folder_splits(data_config, workdir)
  return load_tfds_splits(data_config, workdir)


def load_tfds_splits(data_config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Splits:
  """The TFDS dataset `data.tfds_name`, prepared on first use. TensorFlow Datasets (0.3 s to
  import) and the builders load here, not with the trainer."""
  from xray_jax.data import tfds_builders

  return tfds_builders.load_tfds_splits(data_config, workdir)


# Sources that read data.dir: a given one must exist (a typo must not start a download).
_READ_DATA_DIR = ("folder", "dicom_csv", "csv", "auto", "tfds")

# config.data.source -> loader(data_config, workdir) -> Splits.
SOURCES: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path, bool], Splits]] = {
    "folder": load_folder_splits,
    "dicom_csv": dicom_csv.load_dicom_csv_splits,
    "csv": csv_source.load_csv_splits,
    "npz": npz.load_npz_splits,
    "tfds": load_tfds_splits,
    "auto": load_auto_splits,
}


# Data config fields that hold local paths, read relative to the working directory.
_LOCAL_PATHS = ("dir", "npz_path", "tfds_data_dir", "download_dir")


def make_paths_absolute(data_config: ml_collections.ConfigDict) -> None:
  """Rewrites the local paths of `data_config` (URLs and empty fields aside) as absolute
  ones, so that a saved config finds the data from any working directory."""
  for key in _LOCAL_PATHS:
    value = data_config.get(key)
    if value and "://" not in value:
      data_config[key] = str(pathlib.Path(value).expanduser().absolute())


def data_location(data_config: ml_collections.ConfigDict) -> dict[str, str]:
  """The source and the config fields that say where its images come from, for reports:
  data.dir for folders (and dicom_csv and csv, with their CSV files), data.npz_path for npz,
  the TFDS dataset name otherwise."""
  source = data_config.source
  if source == "auto":
    source = "folder" if data_config.dir else "tfds"
  where = {"folder": ("dir",), "dicom_csv": ("dir", "labels_csv"), "csv": ("dir", "csv_files"),
           "npz": ("npz_path",), "tfds": ("tfds_name", "tfds_data_dir")}[source]
  return {"source": source, **{key: data_config[key] for key in where if data_config[key]}}


def load_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> Splits:
  """Reads the configured dataset (writing nothing: a new validation split comes back in
  `Splits.new_split` for the trainer to record in `workdir`)."""
  if data_config.source not in SOURCES:
    raise errors.ConfigError(
        f"config.data.source={data_config.source!r}; expected one of {', '.join(SOURCES)}")
  data_dir = pathlib.Path(data_config.dir).expanduser()
  if data_config.source in _READ_DATA_DIR and data_config.dir and not data_dir.is_dir():
    download = (", or leave it empty to download the public dataset"
                if data_config.source in ("auto", "tfds") else "")
    raise errors.DataError(f"config.data.dir={data_config.dir!r}: no such directory "
                           f"({data_dir.absolute()}){download}")
  return SOURCES[data_config.source](data_config, pathlib.Path(workdir))
