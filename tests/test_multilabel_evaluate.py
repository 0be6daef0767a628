"""Evaluating multilabel runs (per-finding reports and thresholds, --watch, ensembles with
TTA, --compare), and evaluating a run on another data source through a label map, both ways."""

import csv
import json
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import PIL.Image
import pytest
from helpers import (
  FINDINGS,
  REPO_ROOT,
  chestmnist_config,
  cpu_env,
  load_config_module,
  make_dataset,
  write_findings_npz,
)

from xray_jax import config_checks, errors, inference, sharding, tasks, train, trained
from xray_jax.evaluators import cross_dataset, evaluation, multilabel

# The generated findings, the first renamed as a class of the folder datasets.
NAMES = ("Pneumonia", *FINDINGS[1:])


def evaluation_config(**changes) -> ml_collections.ConfigDict:
  """configs/pneumonia.py's evaluation section, 200 resamples, then `changes`."""
  config = load_config_module(REPO_ROOT / "configs" / "pneumonia.py").get_config().evaluation
  config.update(dict(bootstrap_resamples=200, **changes))
  return config


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> pathlib.Path:
  """A tiny multilabel run on generated findings (NAMES; checkpoints at steps 2 and 4).

  Read-only for the tests that share it: copy it to change it.
  """
  root = tmp_path_factory.mktemp("multilabel")
  write_findings_npz(root / "findings.npz", (("train", 64), ("val", 32), ("test", 32)))
  config = chestmnist_config(root / "findings.npz")
  config.data.update(dict(class_names=",".join(NAMES), image_size=16))
  config.model.update(dict(widths=(4, 8), dense=(8,), dropout=0.0))
  config.training.update(dict(global_batch_size=16, num_train_steps=4, log_every_steps=2,
                              eval_every_steps=2, checkpoint_every_steps=2, eval_batch_size=32))
  train.train_and_evaluate(config, str(root / "work"))
  return root / "work"


def _copy(run: pathlib.Path, tmp_path: pathlib.Path, name: str = "work") -> pathlib.Path:
  return shutil.copytree(run, tmp_path / name)


def _predict(workdir: pathlib.Path, step: int, records, data_config=None, views=()):
  """(probs, labels) of a run's step for `records`, straight from inference.Predictor."""
  run = trained.load(workdir, step)
  predictor = inference.Predictor(run.model, data_config or run.config.data, 32,
                                   sharding.make_mesh(), views, run.task)
  return predictor(run.variables, records)


def _records(workdir: pathlib.Path, split: str):
  run = trained.load(workdir)
  return evaluation.split_records(run, trained.data_config(run.config), split)


def _from_json(report: dict) -> dict:
  return json.loads(json.dumps(report))


@pytest.mark.slow
def test_watch_reports_each_finding_at_thresholds_chosen_on_validation(multilabel_run,
                                                                       tmp_path, caplog):
  workdir = _copy(multilabel_run, tmp_path)
  config = evaluation_config(threshold_method="youden")
  assert evaluation.watch(workdir, "val", config, poll_seconds=0.01) == [2, 4]
  report = json.loads(evaluation.report_path(workdir, "val", 4).read_text())
  records = _records(workdir, "val")
  probs, labels = _predict(workdir, 4, records)
  assert np.isnan(labels).any()  # Missing labels reach the report as NaN.
  chosen = multilabel.choose_thresholds(probs, labels, "youden")
  expected = _from_json(multilabel.finding_report(probs, labels, NAMES, chosen["thresholds"]))
  assert {key: report[key] for key in expected} == expected
  assert report["macro"]["findings"] == 4 and report["num_images"] == 32
  intervals = report["intervals"]
  assert intervals["resamples"] == 200 and set(intervals["per_finding"]) == set(NAMES)
  low, high = intervals["macro"]["roc_auc"]
  assert low < high

  point = json.loads(trained.operating_point_path(workdir, 4).read_text())
  assert point["method"] == "youden" and point["finding_names"] == list(NAMES)
  assert point["thresholds"] == chosen["thresholds"] and report["operating_point"] == point
  run = trained.load(workdir, 4)
  np.testing.assert_array_equal(trained.load_thresholds(run), chosen["thresholds"])
  assert trained.load_threshold(run) is None

  rows = list(csv.DictReader((workdir / "eval" / "val_step4_predictions.csv").open()))
  assert list(rows[0]) == ["path", *(f"prob_{n}" for n in NAMES), *(f"label_{n}" for n in NAMES)]
  assert [r["path"] for r in rows] == [r["path"] for r in records]
  np.testing.assert_allclose([[float(r[f"prob_{n}"]) for n in NAMES] for r in rows], probs,
                             atol=1e-6)
  written = [[float(r[f"label_{n}"]) if r[f"label_{n}"] else np.nan for n in NAMES] for r in rows]
  np.testing.assert_array_equal(written, labels)
  with PIL.Image.open(workdir / "eval" / "val_step4_roc.png") as image:
    assert image.format == "PNG" and min(image.size) > 100

  # The test report reuses the saved thresholds (changed here by hand) rather than choosing.
  point["thresholds"] = [0.2, 0.4, 0.6, 0.8]
  trained.operating_point_path(workdir, 4).write_text(json.dumps(point))
  with caplog.at_level("INFO"):
    test = evaluation.evaluate_checkpoint(workdir, "test", 4, config)
  test_probs, test_labels = _predict(workdir, 4, _records(workdir, "test"))
  assert {name: found["threshold"] for name, found in test["per_finding"].items()} == dict(
      zip(NAMES, point["thresholds"], strict=True))
  expected = _from_json(multilabel.finding_report(test_probs, test_labels, NAMES,
                                                  point["thresholds"]))
  assert test["per_finding"] == expected["per_finding"] and test["operating_point"] == point
  assert [m for m in caplog.messages if m.startswith("test step 4")] == [
      f"test step 4 {line}" for line in multilabel.summary_lines(test)]


@pytest.mark.slow
def test_ensemble_with_tta_averages_the_members_sigmoids(multilabel_run, tmp_path):
  workdir = _copy(multilabel_run, tmp_path)
  member = trained.load(_copy(multilabel_run, tmp_path, "member"), 2)
  config = evaluation_config(tta="hflip")
  report = evaluation.evaluate_checkpoint(workdir, "test", 4, config, members=[member])
  records = _records(workdir, "test")
  (ours, labels), (theirs, _) = (_predict(workdir, step, records, views=("hflip",))
                                 for step in (4, 2))
  assert not np.allclose(ours, theirs)
  expected = _from_json(multilabel.finding_report(np.mean([ours, theirs], axis=0), labels, NAMES))
  assert report["per_finding"] == expected["per_finding"] and report["macro"] == expected["macro"]
  assert report["tta"] == ["hflip"] and report["members"] == [f"{member.workdir}:2"]
  assert (workdir / "eval" / "ensemble_test_step4.json").is_file()
  assert trained.operating_point_path(workdir, 4, "ensemble_").is_file()


@pytest.mark.slow
def test_compare_pairs_each_findings_auc_and_their_macro_mean(multilabel_run, tmp_path):
  workdir, other = _copy(multilabel_run, tmp_path), _copy(multilabel_run, tmp_path, "other")
  config = evaluation_config()
  found = evaluation.compare_runs(workdir, other, "test", (4, 2), config)
  ours = json.loads(evaluation.report_path(workdir, "test", 4).read_text())
  theirs = json.loads(evaluation.report_path(other, "test", 2).read_text())
  macro = found["a_minus_b"]["roc_auc_macro"]
  assert (macro["a"], macro["b"]) == (ours["macro"]["roc_auc"], theirs["macro"]["roc_auc"])
  assert macro["low"] <= macro["difference"] <= macro["high"]
  assert macro["difference"] == pytest.approx(macro["a"] - macro["b"])
  first = found["a_minus_b"][f"roc_auc_{NAMES[0]}"]
  assert first["a"] == ours["per_finding"][NAMES[0]]["roc_auc"]
  assert set(found["a_minus_b"]) == {"roc_auc_macro", *(f"roc_auc_{n}" for n in NAMES)}
  assert "threshold" not in found["a"] and found["resamples"] == 200
  itself = evaluation.compare_runs(workdir, workdir, "test", (4, 4), config)
  assert all(f["difference"] == 0 and f["low"] == f["high"] == 0
             for f in itself["a_minus_b"].values())


def _folder_source(root: pathlib.Path) -> pathlib.Path:
  """A generated single-label folder dataset, NORMAL and PNEUMONIA, with a test split."""
  data = make_dataset(root / "xrays", per_class=8)
  (make_dataset(root / "test_source", per_class=6, seed=1) / "train").rename(data / "test")
  return data


@pytest.mark.slow
def test_multilabel_run_on_a_single_label_folder(multilabel_run, tmp_path):
  workdir, data = _copy(multilabel_run, tmp_path), _folder_source(tmp_path)
  result = subprocess.run(
      [sys.executable, "-m", "xray_jax.evaluate", f"--workdir={workdir}", "--split=test",
       "--config=configs/pneumonia.py:runlocal", f"--config.data.dir={data}",
       "--config.evaluation.bootstrap_resamples=100", "--label_map=Pneumonia=PNEUMONIA,bar=NORMAL",
       "--alsologtostderr"],
      cwd=REPO_ROOT, env=cpu_env(2), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(evaluation.report_path(workdir, "cross_xrays_test", 4).read_text())
  rows = ["Pneumonia -> PNEUMONIA", "bar -> NORMAL"]
  assert report["label_map"] == report["finding_names"] == rows
  assert report["data"] == {"source": "folder", "dir": str(data)}
  assert "cross_xrays_test step 4 Pneumonia -> PNEUMONIA: ROC AUC" in result.stderr
  # The scores are the run's sigmoids of its findings on these images, at its preprocessing.
  table = list(csv.DictReader((workdir / "eval" / "cross_xrays_test_step4_predictions.csv")
                              .open()))
  source = trained.source_data_config(trained.load_config(workdir),
                                      load_config_module(REPO_ROOT / "configs" / "pneumonia.py")
                                      .get_config("runlocal").data)
  records = [{"path": r["path"], "label": 0} for r in table]
  probs, _ = _predict(workdir, 4, records, source)
  scores = np.array([[float(r[f"prob_{row}"]) for row in rows] for r in table])
  np.testing.assert_allclose(scores, probs[:, [0, 1]], atol=1e-6)
  truth = np.array([[float(r[f"label_{row}"]) for row in rows] for r in table])
  pneumonia = np.array(["/PNEUMONIA/" in r["path"] for r in table])
  np.testing.assert_array_equal(truth, np.stack([pneumonia, ~pneumonia], 1))
  expected = multilabel.finding_report(probs[:, [0, 1]], truth, rows, [0.5, 0.5])
  for row in rows:
    assert report["per_finding"][row]["roc_auc"] == pytest.approx(
        expected["per_finding"][row]["roc_auc"], abs=1e-5)
    assert report["per_finding"][row]["positives"] == 6


@pytest.mark.slow
def test_single_label_run_on_a_multilabel_source(trained_workdir, tmp_path):
  workdir = _copy(trained_workdir, tmp_path)
  arrays = write_findings_npz(tmp_path / "findings.npz", (("train", 16), ("test", 40)), seed=3)
  source = chestmnist_config(tmp_path / "findings.npz")
  label_map = [("PNEUMONIA", "disk"), ("NORMAL", "square")]
  report = cross_dataset.evaluate_on_source(workdir, source, "test", "latest",
                                            evaluation_config(), label_map)
  run = trained.load(workdir)
  records = [{"path": str(i), "image": image, "label": 0}
             for i, image in enumerate(arrays["test_images"])]
  probs, _ = _predict(workdir, run.step, records, trained.source_data_config(run.config,
                                                                             source.data))
  truth = arrays["test_labels"][:, [0, 2]]  # disk, square: NaN where missing.
  rows = ["PNEUMONIA -> disk", "NORMAL -> square"]
  expected = _from_json(multilabel.finding_report(probs[:, [1, 0]], truth, rows))
  assert {key: report[key] for key in expected} == expected
  assert report["labels_missing"] == np.isnan(truth).sum() > 0
  assert (workdir / "eval" / f"cross_findings_test_step{run.step}_roc.png").is_file()


def test_label_map_errors_name_the_unknown_outputs_and_labels(trained_workdir, tmp_path):
  for spec in ("PNEUMONIA", "PNEUMONIA=", "=disk", ""):
    with pytest.raises(errors.ConfigError, match=f"--label_map='{spec}': expected OUTPUT=LABEL"):
      cross_dataset.parse_label_map(spec)
  with pytest.raises(errors.ConfigError, match="a pair is given twice"):
    cross_dataset.parse_label_map("a=b,a=b")
  assert cross_dataset.parse_label_map(" a=b, Pleural Effusion=effusion ") == [
      ("a", "b"), ("Pleural Effusion", "effusion")]
  write_findings_npz(tmp_path / "findings.npz", (("train", 8), ("test", 8)))
  source = chestmnist_config(tmp_path / "findings.npz")
  label_map = [("PNEUMONIA", "disk"), ("Edema", "disk"), ("NORMAL", "COVID")]
  with pytest.raises(errors.ConfigError) as e:
    cross_dataset.evaluate_on_source(trained_workdir, source, "test", "latest",
                                     evaluation_config(), label_map)
  assert str(e.value) == (
      f"--label_map: unknown model outputs ['Edema'] (the run {trained_workdir} has NORMAL, "
      "PNEUMONIA); unknown labels ['COVID'] (the source findings has disk, bar, square, column)")


@pytest.mark.parametrize("key, value, message", [
    ("threshold_method", "robust", "expected fixed, youden, sensitivity with config.task="),
    ("temperature_scaling", True, "expected False with config.task='multilabel'"),
])
def test_multilabel_evaluation_refuses_robust_thresholds_and_temperature(key, value, message):
  config = evaluation_config(**{key: value})
  config_checks.check_evaluation_config(config)  # Fine for a single-label run.
  with pytest.raises(errors.ConfigError, match=f"config.evaluation.{key}=.*{message}"):
    config_checks.check_evaluation_config(config, tasks.MULTILABEL)
