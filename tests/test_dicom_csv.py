"""The dicom_csv source (RSNA Pneumonia layout): labels, per-patient split, errors, training."""

import json

import numpy as np
import pytest
from helpers import make_dicom, tiny_config, write_dicom

from xray_jax import errors, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets
from xray_jax.evaluators import evaluation

HEADER = "patientId,x,y,width,height,Target\n"


def make_rsna_dir(root, patients: int = 20):
  """Patients p00..: odd ones positive with two box rows, p01 with a negative row first."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(patients):
    patient = f"p{i:02d}"
    write_dicom(root / "images" / f"{patient}.dcm",
                make_dicom(rng.integers(0, 256, (32, 32), np.uint8)))
    if i == 1:
      rows.append(f"{patient},,,,,0")
    rows.extend([f"{patient},10,10,5,5,1"] * 2 if i % 2 else [f"{patient},,,,,0"])
  (root / "labels.csv").write_text(HEADER + "\n".join(rows) + "\n")
  return root


def rsna_config(root, **training):
  config = tiny_config(root, **training)
  config.data.update(dict(source="dicom_csv", labels_csv="labels.csv", dicom_subdir="images"))
  return config


def _by_patient(records) -> dict[str, int]:
  return {r["path"].rsplit("/", 1)[-1].removesuffix(".dcm"): r["label"] for r in records}


def test_one_record_per_patient_labelled_by_any_positive_row(tmp_path):
  root = make_rsna_dir(tmp_path / "data")
  found = datasets.load_splits(rsna_config(root).data, tmp_path / "work")
  assert found.class_names == ("NORMAL", "PNEUMONIA") and found.test == []
  train_ids, val_ids = _by_patient(found.train), _by_patient(found.val)
  assert not train_ids.keys() & val_ids.keys()
  assert len(found.train) + len(found.val) == 20  # Two-row patients are not duplicated.
  assert {**train_ids, **val_ids} == {f"p{i:02d}": i % 2 for i in range(20)}
  assert sorted(val_ids.values()) == [0, 0, 1, 1]  # Stratified: a quarter of each class.


def test_split_is_saved_and_reused(tmp_path):
  root = make_rsna_dir(tmp_path / "data")
  workdir = tmp_path / "work"
  first = datasets.load_splits(rsna_config(root).data, workdir)
  train.record_split(workdir, first)
  saved = json.loads((workdir / workdir_lib.SPLIT).read_text())["val"]
  assert saved == sorted(f"{patient}.dcm" for patient in _by_patient(first.val))
  config = rsna_config(root)
  config.data.split_seed = 5
  assert datasets.load_splits(config.data, workdir).val == first.val
  assert datasets.load_splits(config.data, tmp_path / "other").val != first.val


def test_absolute_labels_csv_and_class_names(tmp_path):
  root = make_rsna_dir(tmp_path / "data")
  config = rsna_config(root)
  config.data.labels_csv = str(root / "labels.csv")
  config.data.class_names = "clear, opacity"
  assert datasets.load_splits(config.data, tmp_path / "work").class_names == ("clear", "opacity")


@pytest.mark.parametrize("csv, message", [
    (None, "labels.csv: labels CSV not found"),
    ("patientId,Label\np00,0\n", "labels.csv: no column 'Target'"),
    (HEADER + "p00,,,,,2\n", r"labels.csv, line 2: Target='2' for id 'p00'"),
    (HEADER + "p00,,,,,0\nghost,,,,,1\n", r"images/ghost.dcm: no image for this id"),
])
def test_bad_csv_is_reported(tmp_path, csv, message):
  root = make_rsna_dir(tmp_path / "data", patients=2)
  if csv is None:
    (root / "labels.csv").unlink()
  else:
    (root / "labels.csv").write_text(csv)
  with pytest.raises(errors.DataError, match=message):
    datasets.load_splits(rsna_config(root).data, tmp_path / "work")


def test_fewer_than_two_class_names_is_a_config_error(tmp_path):
  config = rsna_config(make_rsna_dir(tmp_path / "data", patients=2))
  config.data.class_names = "PNEUMONIA"
  with pytest.raises(errors.ConfigError, match="config.data.class_names='PNEUMONIA'"):
    datasets.load_splits(config.data, tmp_path / "work")


@pytest.mark.slow
def test_training_on_dicom_csv(tmp_path):
  workdir = tmp_path / "work"
  config = rsna_config(make_rsna_dir(tmp_path / "data"))
  final = train.train_and_evaluate(config, str(workdir))
  assert 0.0 <= final["val/auc"] <= 1.0
  report = evaluation.evaluate_checkpoint(workdir, "val", "latest", config.evaluation)
  assert report["at_0.5"]["num_examples"] == 4
  with pytest.raises(errors.DataError, match="data source 'dicom_csv' .* has no test split"):
    evaluation.evaluate_checkpoint(workdir, "test", "latest", config.evaluation)
  assert json.loads((workdir / "classes.json").read_text()) == ["NORMAL", "PNEUMONIA"]
  assert len(json.loads((workdir / workdir_lib.SPLIT).read_text())["val"]) == 4
