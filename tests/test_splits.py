"""The patient-level validation split on files named like the public chest X-ray layout."""

import json
import pathlib

import numpy as np
import PIL.Image
import pytest
from helpers import REPO_ROOT, load_config_module

from xray_jax import errors, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets, splits

DEFAULT_PATTERN = load_config_module(
    REPO_ROOT / "configs" / "pneumonia.py").get_config(None).data.group_pattern


def make_patient_dataset(root: pathlib.Path, seed: int = 0) -> dict[str, str]:
  """ROOT/train/{NORMAL,PNEUMONIA}/ with 1-4 images per patient, named as in the public
  release (its odd names included), plus 3 files no pattern matches.

  Returns file name -> the group it must fall in: its patient id, as the names were built.
  """
  rng = np.random.default_rng(seed)
  names = {}
  image = 0
  for patient in range(1, 41):
    for _ in range(rng.integers(1, 5)):
      image += 1
      kind = ("bacteria", "virus")[patient % 2]
      names[f"PNEUMONIA/person{patient}_{kind}_{image}.jpeg"] = f"person{patient}"
    if patient == 7:  # The public release has one name with an extra number.
      names[f"PNEUMONIA/person{patient}_virus_{image}_1.jpeg"] = f"person{patient}"
  for patient in range(100, 124):
    prefix = "NORMAL2-IM" if patient % 3 == 0 else "IM"
    for n in range(1, rng.integers(2, 4)):
      suffix = f"-{n:04d}-0002" if patient % 5 == 0 else f"-{n:04d}"
      names[f"NORMAL/{prefix}-{patient:04d}{suffix}.jpeg"] = f"{prefix}-{patient:04d}"
  for i in range(3):
    names[f"NORMAL/scan_{i}.jpeg"] = f"train/NORMAL/scan_{i}.jpeg"  # Groups of their own.
  pixels = np.zeros((8, 8), np.uint8)
  for name in names:
    (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(pixels).save(root / "train" / name)
  return {pathlib.Path(name).name: patient for name, patient in names.items()}


def folder_config(root: pathlib.Path, **overrides):
  config = load_config_module(REPO_ROOT / "configs" / "pneumonia.py").get_config(None)
  config.data.update(dict(source="folder", dir=str(root), val_fraction=0.2, **overrides))
  return config.data


def _patients(records, patient_of: dict[str, str]) -> set[str]:
  return {patient_of[pathlib.Path(r["path"]).name] for r in records}


def test_default_pattern_reads_the_public_names():
  names = ["train/PNEUMONIA/person1000_bacteria_2931.jpeg",
           "train/PNEUMONIA/person1000_virus_1681.jpeg",
           "train/PNEUMONIA/person447_virus_921_1.jpeg", "train/NORMAL/IM-0115-0001.jpeg",
           "train/NORMAL/IM-0429-0001-0002.jpeg", "train/NORMAL/NORMAL2-IM-0115-0001.jpeg",
           "train/NORMAL/IM-0115.jpeg"]
  assert splits.patient_groups(names, DEFAULT_PATTERN) == [
      "person1000", "person1000", "person447", "IM-0115", "IM-0429", "NORMAL2-IM-0115",
      "train/NORMAL/IM-0115.jpeg"]  # No image number: not the layout, its own group.


def test_no_patient_on_both_sides_and_class_ratios_kept(tmp_path):
  patient_of = make_patient_dataset(tmp_path / "data")
  found = datasets.load_splits(folder_config(tmp_path / "data"), tmp_path / "work")
  train, val = _patients(found.train, patient_of), _patients(found.val, patient_of)
  assert not train & val
  assert len(train | val) == 40 + 24 + 3
  for label in (0, 1):
    total = sum(r["label"] == label for r in found.train + found.val)
    held = sum(r["label"] == label for r in found.val)
    assert abs(held / total - 0.2) <= 3 / total  # Within one patient of the target.
    assert 0 < held < total


def test_split_records_its_groups_and_is_the_same_on_resume_and_rerun(tmp_path):
  patient_of = make_patient_dataset(tmp_path / "data")
  workdir = tmp_path / "work"
  first = datasets.load_splits(folder_config(tmp_path / "data"), workdir)
  assert not workdir.exists()  # The data layer writes nothing; the trainer records it.
  train.record_split(workdir, first)
  saved = json.loads((workdir / workdir_lib.SPLIT).read_text())
  assert saved["group_pattern"] == DEFAULT_PATTERN and saved["num_groups"] == 67
  assert set(saved["val_groups"]) == _patients(first.val, patient_of)
  assert len(saved["val"]) == len(first.val)
  # Resume: the saved split wins over a changed seed or pattern.
  resumed = datasets.load_splits(
      folder_config(tmp_path / "data", split_seed=9, group_pattern="(x)"), workdir)
  assert resumed.val == first.val and resumed.train == first.train
  # Rerun in a new workdir: the same seed gives the same split, another seed another one.
  assert datasets.load_splits(folder_config(tmp_path / "data"), tmp_path / "w2").val == first.val
  other = datasets.load_splits(folder_config(tmp_path / "data", split_seed=9), tmp_path / "w3")
  assert other.val != first.val


def test_unmatched_files_are_groups_of_their_own(tmp_path, caplog):
  names = list(make_patient_dataset(tmp_path / "data"))
  pneumonia = [name for name in names if name.startswith("person")]
  with caplog.at_level("INFO"):
    groups = splits.patient_groups(names, r"(person\d+)_")  # Normal files do not match.
  assert groups[:len(pneumonia)] == [name.split("_")[0] for name in pneumonia]
  assert groups[len(pneumonia):] == names[len(pneumonia):]
  assert f"{len(names) - len(pneumonia)} of {len(names)} file paths match no" in caplog.text
  with caplog.at_level("WARNING"):
    assert splits.patient_groups(names, r"(patient\d+)") == names
  assert "the validation split is per image" in caplog.text


def test_a_class_with_one_patient_cannot_be_split():
  records = [{"path": f"{i}.png", "label": int(i < 3)} for i in range(20)]
  groups = ["p1"] * 3 + [f"n{i}" for i in range(17)]
  with pytest.raises(errors.DataError, match="class 1 has 3 training images in 1 groups"):
    splits.stratified_split(records, groups, 0.2, seed=0)
