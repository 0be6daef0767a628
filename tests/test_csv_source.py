"""The csv source and the public chest X-ray configs, each on a small copy of its dataset's
layout (real header lines, generated images): labels, patients, views, splits, errors."""

import gzip
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT, load_config_module, tiny_config, write_image

from xray_jax import config_checks, errors, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets
from xray_jax.evaluators import evaluation
from xray_jax.label_counts import format_counts, split_counts

CXR14_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
                   "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,"
                   "Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
                   "Support Devices")
MIMIC_SPLIT_HEADER = "dicom_id,study_id,subject_id,split"
MIMIC_CHEXPERT_HEADER = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,"
                         "Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,"
                         "No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
                         "Support Devices")
MIMIC_METADATA_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,"
                         "ViewPosition,Rows,Columns,StudyDate,StudyTime,"
                         "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                         "PatientOrientationCodeSequence_CodeMeaning")


def config_of(name: str, data_dir: pathlib.Path, arg: str | None = None):
  config = load_config_module(REPO_ROOT / "configs" / f"{name}.py").get_config(arg)
  config.data.dir = str(data_dir)
  config.data.val_fraction = 0.25
  return config


def write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "\n".join(lines) + "\n"
  if path.suffix == ".gz":
    with gzip.open(path, "wt") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def by_name(records) -> dict[str, dict]:
  return {pathlib.Path(r["path"]).name: r for r in records}


def assert_patient_disjoint(found) -> None:
  train_patients = {r["patient"] for r in found.train}
  assert train_patients and not train_patients & {r["patient"] for r in found.val}


# ChestX-ray14: 12 patients, 2 images each; patients 1-9 in train_val, 10-12 in test. Each
# finding appears (patient 3: two at once), the first films have none (patient 12's:
# Hernia), patient 2's second film is AP.
CXR14_FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion|Infiltration", "Mass", "Nodule",
                  "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema",
                  "Fibrosis", "Pleural_Thickening", "Hernia"]


def make_chestxray14(root: pathlib.Path) -> pathlib.Path:
  rng = np.random.default_rng(0)
  rows, train_val, test = [CXR14_HEADER], [], []
  for patient in range(1, 13):
    for follow_up in range(2):
      name = f"{patient:08d}_{follow_up:03d}.png"
      write_image(root / "images" / name, follow_up, rng)
      findings = (CXR14_FINDINGS[patient - 1] if follow_up else
                  CXR14_FINDINGS[-1] if patient == 12 else "No Finding")
      view = "AP" if (patient, follow_up) == (2, 1) else "PA"
      rows.append(f"{name},{findings},{follow_up},{patient},58,M,{view},2682,2749,0.143,0.143,")
      (train_val if patient < 10 else test).append(name)
  write_lines(root / "Data_Entry_2017.csv", rows)
  write_lines(root / "train_val_list.txt", train_val)
  write_lines(root / "test_list.txt", test)
  return root


def test_chestxray14_findings_patients_and_official_split(tmp_path):
  root = make_chestxray14(tmp_path / "ChestX-ray14")
  config = config_of("chestxray14", root)
  config_checks.check_config(config)
  found = datasets.load_splits(config.data, tmp_path / "work")
  names = found.class_names
  assert len(names) == 14 and names[2] == "Effusion" and names[-1] == "Hernia"
  records = by_name(found.train + found.val + found.test)
  assert len(records) == 24 and all(pathlib.Path(p).is_file() for p in
                                     (r["path"] for r in records.values()))
  both = records["00000003_001.png"]
  assert both["label"].dtype == np.float32 and both["label"].shape == (14,)
  assert np.flatnonzero(both["label"]).tolist() == [names.index("Effusion"),
                                                     names.index("Infiltration")]
  assert not records["00000003_000.png"]["label"].any()  # No Finding: all absent.
  assert records["00000003_000.png"]["patient"] == "3"
  assert {pathlib.Path(r["path"]).name[:8] for r in found.test} == {
      f"{p:08d}" for p in (10, 11, 12)}
  assert len(found.train) + len(found.val) == 18
  assert_patient_disjoint(found)
  assert found.val and {bool(r["label"].any()) for r in found.val} == {False, True}
  train.record_split(tmp_path / "work", found)
  saved = json.loads((tmp_path / "work" / workdir_lib.SPLIT).read_text())
  assert saved["patient_column"] == "Patient ID" and "group_pattern" not in saved
  again = datasets.load_splits(config.data, tmp_path / "work")
  assert [r["path"] for r in again.val] == [r["path"] for r in found.val]


def test_chestxray14_view_filter(tmp_path):
  config = config_of("chestxray14", make_chestxray14(tmp_path / "ChestX-ray14"))
  config.data.update(view_column="View Position", views="PA")
  found = datasets.load_splits(config.data, tmp_path / "work")
  names = by_name(found.train + found.val + found.test)
  assert len(names) == 23 and "00000002_001.png" not in names


def make_chexnet_lists(root: pathlib.Path) -> pathlib.Path:
  """DIR/labels/{train,val,test}_list.txt (image, 14 labels) and DIR/images/."""
  rng = np.random.default_rng(1)
  for split, patients in (("train", range(1, 9)), ("val", (9, 10)), ("test", (11, 12))):
    lines = []
    for patient in patients:
      for follow_up in range(2):
        name = f"{patient:08d}_{follow_up:03d}.png"
        write_image(root / "images" / name, 0, rng)
        labels = np.zeros(14, int)
        labels[patient % 14] = follow_up
        lines.append(" ".join([name, *map(str, labels)]))
    write_lines(root / "labels" / f"{split}_list.txt", lines)
  return root


def test_chestxray14_label_lists(tmp_path):
  config = config_of("chestxray14", make_chexnet_lists(tmp_path / "cxr14"), "lists")
  config_checks.check_config(config)
  found = datasets.load_splits(config.data, tmp_path / "work")
  assert (len(found.train), len(found.val), len(found.test)) == (16, 4, 4)
  assert found.new_split is None  # val_list.txt is the validation split.
  label = by_name(found.train)["00000003_001.png"]["label"]
  assert np.flatnonzero(label).tolist() == [3] and label.dtype == np.float32
  assert "patient" not in found.val[0]
  groups = evaluation.record_groups(found.val, config.data)  # By data.group_pattern.
  assert groups == ["00000009", "00000009", "00000010", "00000010"]
  counts = split_counts(found.class_names, {"train": found.train, "val": found.val},
                        config.data.group_pattern)
  assert counts["train"]["images"] == 16 and counts["train"]["patients"] == 8
  assert counts["val"]["shared_patients"] == 0
  assert counts["train"]["labels"]["Infiltration"] == {
      "present": 1, "absent": 15, "uncertain": 0, "missing": 0}
  assert "| Infiltration | 1 (6.25%) | 0 (0.00%) |" in format_counts(counts)


def make_chexpert(parent: pathlib.Path) -> pathlib.Path:
  """PARENT/CheXpert-v1.0-small/{train,valid}.csv and its train/ and valid/ images: 6 train
  patients with a frontal and a lateral film, 2 valid patients."""
  root = parent / "CheXpert-v1.0-small"
  rng = np.random.default_rng(2)
  for split, patients in (("train", range(1, 7)), ("valid", (64541, 64542))):
    rows = [CHEXPERT_HEADER]
    for patient in patients:
      for view, side in ((1, "frontal"), (2, "lateral")):
        path = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study1/view{view}_{side}.jpg"
        write_image(parent / path, 0, rng)
        labels = ["1.0", "", "0.0", "-1.0", *[""] * 9, "1.0"] if patient % 2 else \
            ["0.0"] * 14
        sex, frontal = ("Female", "Frontal") if side == "frontal" else ("Male", "Lateral")
        rows.append(",".join([path, sex, "68", frontal, "AP" if side == "frontal" else "",
                              *labels]))
    write_lines(root / f"{split}.csv", rows)
  return root


def test_chexpert_uncertain_missing_frontal_and_valid_as_test(tmp_path):
  config = config_of("chexpert", make_chexpert(tmp_path / "data"))
  config_checks.check_config(config)
  found = datasets.load_splits(config.data, tmp_path / "work")
  assert found.class_names[0] == "No Finding" and len(found.class_names) == 14
  every = found.train + found.val + found.test
  assert len(every) == 8 and all(r["path"].endswith("view1_frontal.jpg") for r in every)
  assert all(pathlib.Path(r["path"]).is_file() for r in every)
  assert {pathlib.Path(r["path"]).parts[-3] for r in found.test} == {
      "patient64541", "patient64542"}
  label = next(r["label"] for r in every if "patient00001" in r["path"])
  np.testing.assert_array_equal(label[:4], [1, np.nan, 0, -1])
  assert label[-1] == 1 and np.isnan(label[4:13]).all()
  train_patients = {pathlib.Path(r["path"]).parts[-3] for r in found.train}
  assert train_patients and not train_patients & {
      pathlib.Path(r["path"]).parts[-3] for r in found.val}
  assert found.new_split["group_pattern"] == config.data.group_pattern
  assert found.new_split["val"][0].startswith("CheXpert-v1.0-small/train/patient")


def make_mimic(root: pathlib.Path) -> pathlib.Path:
  """DIR/mimic-cxr-2.0.0-{split,chexpert,metadata}.csv.gz and DIR/files/pNN/...: 8 subjects,
  a study each with a PA and a lateral film; subject 8's study has no label row."""
  rng = np.random.default_rng(3)
  split_rows, label_rows, meta_rows = ([MIMIC_SPLIT_HEADER], [MIMIC_CHEXPERT_HEADER],
                                       [MIMIC_METADATA_HEADER])
  for i in range(1, 9):
    subject, study = 10000000 + i * 1111, 50000000 + i
    split = "test" if i == 7 else "validate" if i == 6 else "train"
    if i < 8:
      labels = ["1.0" if i % 2 else "0.0", *[""] * 7, "0.0" if i % 2 else "1.0", *[""] * 5]
      label_rows.append(",".join([str(subject), str(study), *labels]))
    for view in ("PA", "LL"):
      dicom = f"{i:08x}-{view.lower()}00000-00000000-00000000-00000000"
      write_image(root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" /
                  f"{dicom}.jpg", 0, rng)
      split_rows.append(f"{dicom},{study},{subject},{split}")
      meta_rows.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},3056,2544,"
                       f"21800506,213014.531,Chest 2 Views,"
                       f"{'postero-anterior' if view == 'PA' else 'lateral'},Erect")
  for name, rows in (("split", split_rows), ("chexpert", label_rows), ("metadata", meta_rows)):
    write_lines(root / f"mimic-cxr-2.0.0-{name}.csv.gz", rows)
  return root


def test_mimic_joined_gzipped_tables_split_column_and_views(tmp_path):
  config = config_of("mimic_cxr", make_mimic(tmp_path / "mimic-cxr-jpg" / "2.0.0"))
  config_checks.check_config(config)
  found = datasets.load_splits(config.data, tmp_path / "work")
  assert found.new_split is None  # The official validate split.
  assert (len(found.train), len(found.val), len(found.test)) == (5, 1, 1)
  every = found.train + found.val + found.test
  assert all("-pa" in r["path"] and pathlib.Path(r["path"]).is_file() for r in every)
  assert {r["patient"] for r in found.val} == {str(10000000 + 6 * 1111)}
  assert "/files/p10/p10001111/s50000001/" in found.train[0]["path"]
  names = found.class_names
  label = found.train[0]["label"]  # Subject 1: Atelectasis 1, No Finding 0, others blank.
  assert label[names.index("Atelectasis")] == 1 and label[names.index("No Finding")] == 0
  assert np.isnan(label[names.index("Edema")])
  assert evaluation.record_groups(found.test, config.data) == [str(10000000 + 7 * 1111)]


def make_tb(root: pathlib.Path, prefix: str, count: int = 12) -> pathlib.Path:
  rng = np.random.default_rng(4)
  for i in range(1, count + 1):
    write_image(root / "CXR_png" / f"{prefix}_{i:04d}_{i % 2}.png", i % 2, rng)
  (root / "ClinicalReadings").mkdir()
  (root / "ClinicalReadings" / f"{prefix}_0001_1.txt").write_text("male 35yrs\nPTB\n")
  return root / "CXR_png"


@pytest.mark.parametrize("name, prefix, folder", [("tb_shenzhen", "CHNCXR", "ChinaSet_AllFiles"),
                                                  ("tb_montgomery", "MCUCXR", "MontgomerySet")])
def test_tuberculosis_sets_labelled_by_file_name(tmp_path, name, prefix, folder):
  config = config_of(name, make_tb(tmp_path / folder, prefix))
  config_checks.check_config(config)
  found = datasets.load_splits(config.data, tmp_path / "work")
  assert found.class_names == ("NORMAL", "TUBERCULOSIS") and found.test == []
  records = by_name(found.train + found.val)
  assert len(records) == 12
  assert records[f"{prefix}_0003_1.png"]["label"] == 1
  assert records[f"{prefix}_0004_0.png"]["label"] == 0
  assert found.new_split["num_groups"] == 12  # One film per patient.
  assert sorted(r["label"] for r in found.val) == [0, 0, 1, 1]


# A single-label table: class, patient and split columns.
TABLE_FIELDS = dict(source="csv", csv_files="labels.csv", image_path="{file}",
                    label_column="target", patient_column="pid", split_column="split")


def make_label_table(root: pathlib.Path, images: int, test_from: int) -> pathlib.Path:
  """ROOT/x{i}.png and ROOT/labels.csv: image i of class i % 2 and patient i // 4, in the
  test split from `test_from` on."""
  rng = np.random.default_rng(5)
  rows = ["file,target,pid,split"]
  for i in range(images):
    write_image(root / f"x{i}.png", i % 2, rng)
    rows.append(f"x{i}.png,{i % 2},p{i // 4},{'test' if i >= test_from else 'train'}")
  write_lines(root / "labels.csv", rows)
  return root


def test_single_label_column(tmp_path):
  config = config_of("pneumonia", make_label_table(tmp_path / "data", 16, test_from=12))
  config.data.update(TABLE_FIELDS)
  config_checks.check_config(config)
  found = datasets.load_splits(config.data, tmp_path / "work")
  assert {r["label"] for r in found.train} == {0, 1} and isinstance(found.val[0]["label"], int)
  assert [r["patient"] for r in found.test] == ["p3"] * 4
  assert_patient_disjoint(found)


@pytest.mark.parametrize("edit, message", [
    (lambda root: (root / "images" / "00000005_001.png").unlink(),
     r"00000005_001.png: no such image, listed in .*Data_Entry_2017.csv \(1 of 18"),
    (lambda root: write_lines(root / "Data_Entry_2017.csv", ["Image Index,Finding Labels,x",
                                                            "a.png,Mass,1"]),
     r"Data_Entry_2017.csv: no column 'Patient ID' \(config.data.patient_column\)"),
    (lambda root: write_lines(root / "Data_Entry_2017.csv", [
        CXR14_HEADER, *[f"{i:08d}_000.png,{f},0,{i},58,M,PA,1,1,1,1,"
                        for i, f in enumerate(CXR14_FINDINGS[:-1], 1)]]),
     r"Data_Entry_2017.csv: no row of column 'Finding Labels' lists Hernia"),
    (lambda root: (root / "Data_Entry_2017.csv").write_bytes(b"\xff\xfe\x00garbage"),
     r"Data_Entry_2017.csv: cannot read CSV"),
    (lambda root: (root / "test_list.txt").unlink(),
     r"test_list.txt: cannot read list \(config.data.split_lists\)"),
])
def test_chestxray14_errors_name_the_file(tmp_path, edit, message):
  root = make_chestxray14(tmp_path / "ChestX-ray14")
  edit(root)
  with pytest.raises(errors.DataError, match=message):
    datasets.load_splits(config_of("chestxray14", root).data, tmp_path / "work")


@pytest.mark.parametrize("value, message", [
    ("2.0", r"train.csv, line 2 \(CheXpert-v1.0-small/train/patient00001/study1/"
            r"view1_frontal.jpg\): column 'No Finding' = '2.0'; expected 1, 0, -1"),
    ("yes", r"column 'No Finding' = 'yes'"),
])
def test_bad_finding_value(tmp_path, value, message):
  root = make_chexpert(tmp_path / "data")
  lines = (root / "train.csv").read_text().splitlines()
  fields = lines[1].split(",")
  fields[5] = value
  write_lines(root / "train.csv", [lines[0], ",".join(fields), *lines[2:]])
  with pytest.raises(errors.DataError, match=message):
    datasets.load_splits(config_of("chexpert", root).data, tmp_path / "work")


def test_mimic_errors(tmp_path):
  root = make_mimic(tmp_path / "mimic")
  config = config_of("mimic_cxr", root)
  split_csv = root / "mimic-cxr-2.0.0-split.csv.gz"
  with gzip.open(split_csv, "rt") as f:
    lines = f.read().splitlines()
  write_lines(split_csv, [lines[0], lines[1].replace("train", "dev"), *lines[2:]])
  with pytest.raises(errors.DataError, match=r"split.csv.gz \+ .*, line 2: column 'split' = "
                                             r"'dev'; expected one of train, validate, test"):
    datasets.load_splits(config.data, tmp_path / "work")
  split_csv.write_text("dicom_id,study_id\n")  # Not gzipped.
  with pytest.raises(errors.DataError, match=r"split.csv.gz: cannot read CSV"):
    datasets.load_splits(config.data, tmp_path / "work")


@pytest.mark.parametrize("overrides, message", [
    (dict(task="single_label"), r"config.data.label_column='': expected empty with "
                                r"config.task='multilabel'"),
    (dict(split_column="split"), r"config.data.split_lists: the split is already given by "
                                 r"config.data.split_column"),
    (dict(csv_files="train=a.csv,tset=b.csv"), r"config.data.csv_files=.*'tset=b.csv' is not"),
    (dict(image_path="images/x.png"), r"config.data.image_path='images/x.png': expected a "
                                      r"path with \{COLUMN\} fields"),
    (dict(view_column="View Position"), r"config.data.views='': expected the values"),
])
def test_config_errors_name_the_key(tmp_path, overrides, message):
  config = config_of("chestxray14", tmp_path)
  config.task = overrides.pop("task", config.task)
  config.data.update(overrides)
  with pytest.raises(errors.ConfigError, match=message):
    config_checks.check_config(config)


def test_stratification_of_vector_labels_keeps_nan_absent(tmp_path):
  """Validation holds patients with a finding and without one; NaN counts as absent."""
  config = config_of("chexpert", make_chexpert(tmp_path / "data"))
  config.data.val_fraction = 0.4
  found = datasets.load_splits(config.data, tmp_path / "work")
  has_finding = {bool(np.any(r["label"] == 1)) for r in found.val}
  assert has_finding == {False, True}


def test_label_counts_binary_reads_tables_without_images(tmp_path):
  root = make_chexpert(tmp_path / "data")
  for image in (tmp_path / "data").rglob("*.jpg"):
    image.unlink()
  command = [sys.executable, "-m", "xray_jax.label_counts", "--config=configs/chexpert.py",
             f"--config.data.dir={root}"]
  done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
  assert "| images | 6 | 2 |" in done.stdout
  assert "| Lung Opacity | 0 (0.00%), uncertain 3 | 0 (0.00%), uncertain 1 |" in done.stdout
  assert "| Edema | 0 (0.00%), missing 3 | 0 (0.00%), missing 1 |" in done.stdout
  failed = subprocess.run([*command, "--config.data.source=folder"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
  assert failed.returncode == 1
  assert failed.stderr.strip().endswith("error: config.data.source='folder': expected csv")


@pytest.mark.slow
def test_training_and_patient_bootstrap_on_a_csv_table(tmp_path):
  """A single-label table trains; its test split's intervals resample the patients of
  data.patient_column (2 of them), not images."""
  config = tiny_config(make_label_table(tmp_path / "data", 48, test_from=40))
  config.data.update(TABLE_FIELDS)
  workdir = tmp_path / "work"
  assert 0.0 <= train.train_and_evaluate(config, str(workdir))["val/auc"] <= 1.0
  report = evaluation.evaluate_checkpoint(workdir, "test", "latest", config.evaluation)
  assert report["at_0.5"]["num_examples"] == 8
  assert report["intervals"]["unit"] == "patient" and report["intervals"]["groups"] == 2
