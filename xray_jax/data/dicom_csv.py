"""The RSNA Pneumonia Challenge layout: data.dir/data.dicom_subdir/<id>.dcm labelled by a CSV.

The CSV may hold several rows per patient (RSNA lists one per box): the patient takes the
highest label of its rows, so it is positive if any row is. One image per patient: unless
data.group_pattern finds a patient id in <id>.dcm, each image is its own group in the
patient-level validation split.
"""

import pathlib

import ml_collections

from xray_jax import errors
from xray_jax.data import csv_tables, label_rules, splits
from xray_jax.data.records import Record


def _read_labels(path: pathlib.Path, id_column: str, label_column: str,
                num_classes: int) -> dict[str, int]:
  """Patient id -> label (the highest of its rows) from the CSV at `path`."""
  if not path.is_file():
    raise errors.DataError(f"{path}: labels CSV not found (config.data.labels_csv)")
  table = csv_tables.read_table(path)
  csv_tables.require_columns(table, (id_column, label_column))
  labels = {}
  for line, row in table.rows:
    patient, value = row[id_column], row[label_column]
    label = label_rules.class_index(value, num_classes)
    if label is None:
      raise errors.DataError(
          f"{path}, line {line}: {label_column}={value!r} for id {patient!r}; "
          f"expected an integer in [0, {num_classes})")
    labels[patient] = max(label, labels.get(patient, label))
  if not labels:
    raise errors.DataError(f"{path}: no rows")
  return labels


def load_dicom_csv_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> splits.Splits:
  """Train and validation (carved per patient, saved in `workdir`); no test split."""
  class_names = label_rules.parse_class_names(data_config.class_names)
  root = pathlib.Path(data_config.dir).expanduser()
  labels = _read_labels(root / pathlib.Path(data_config.labels_csv).expanduser(),
                       data_config.id_column, data_config.label_column, len(class_names))
  images = root / data_config.dicom_subdir
  records: list[Record] = [
      {"path": str(images / f"{patient}.dcm"), "label": label}
      for patient, label in sorted(labels.items())
  ]
  missing = [r["path"] for r in records if not pathlib.Path(r["path"]).is_file()]
  if missing:
    raise errors.DataError(
        f"{missing[0]}: no image for this id of {data_config.labels_csv} "
        f"({len(missing)} of {len(records)} ids have no .dcm file)")
  return splits.make_splits(class_names, {"train": records}, images, data_config, workdir)
