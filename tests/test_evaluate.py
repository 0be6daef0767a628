"""The checkpoint-evaluation job: reports, figures, operating point and --watch."""

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest
import sklearn.metrics
from helpers import REPO_ROOT, assert_each_log_line_once

from xray_jax import errors, sharding, trained
from xray_jax import workdir as workdir_lib
from xray_jax.data import shifts
from xray_jax.evaluators import crossfit, evaluation, metrics, stress

pytestmark = pytest.mark.slow


def evaluation_config(method="youden") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      threshold_method=method, target_sensitivity=0.9, calibration_bins=5))


def test_test_split_report_uses_the_validation_threshold(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  report = evaluation.evaluate_checkpoint(workdir, "test", "latest", evaluation_config())
  assert report["step"] == 6 and report["split"] == "test"
  config = trained.load_config(trained_workdir)
  assert report["data"] == {"source": "folder", "dir": config.data.dir}
  # Choosing the threshold needed validation predictions: that report exists too.
  val = json.loads(evaluation.report_path(workdir, "val", 6).read_text())
  point = json.loads(trained.operating_point_path(workdir, 6).read_text())
  assert point["method"] == "youden" and val["operating_point"] == point
  assert report["operating_point"] == point

  rows = list(csv.DictReader((workdir / "eval" / "test_step6_predictions.csv").open()))
  assert len(rows) == 12 == report["at_0.5"]["num_examples"]
  probs = np.array([[float(r["prob_NORMAL"]), float(r["prob_PNEUMONIA"])] for r in rows])
  labels = np.array([r["label"] == "PNEUMONIA" for r in rows])
  positive = report["at_0.5"]["positive_class"]
  assert positive["roc_auc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels, probs[:, 1]))
  at_point = report["at_operating_point"]["positive_class"]
  predicted = probs[:, 1] >= point["threshold"]
  assert at_point["recall"] == pytest.approx(sklearn.metrics.recall_score(labels, predicted))
  assert at_point["threshold"] == point["threshold"]
  for name in ("roc", "pr", "confusion", "reliability"):
    with PIL.Image.open(workdir / "eval" / f"test_step6_{name}.png") as image:
      assert image.format == "PNG" and min(image.size) > 100


def test_best_and_numbered_checkpoints_and_errors(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  report = evaluation.evaluate_checkpoint(workdir, "val", 2, evaluation_config("sensitivity"))
  assert report["step"] == 2
  assert report["at_operating_point"]["positive_class"]["recall"] >= 0.9
  metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  best = max((m for m in metrics if "val/auc" in m), key=lambda m: (m["val/auc"], m["step"]))
  assert trained.load(workdir, "best").step == best["step"]
  with pytest.raises(errors.CheckpointError, match="checkpoint 3: expected latest, best"):
    trained.load(workdir, 3)
  with pytest.raises(errors.DataError, match="config.json: missing"):
    trained.load(tmp_path / "empty")


def test_watch_evaluates_each_checkpoint_once(trained_workdir, tmp_path, monkeypatch):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  final = tmp_path / "final"  # Step 6 is not written yet when the watcher starts.
  (workdir / "checkpoints" / "6").rename(final)
  calls = []
  original = evaluation.evaluate_checkpoint

  def counting(workdir_, split, step, *args):
    calls.append(step)
    return original(workdir_, split, step, *args)

  monkeypatch.setattr(evaluation, "evaluate_checkpoint", counting)
  done = []
  watcher = threading.Thread(target=lambda: done.extend(
      evaluation.watch(workdir, "val", evaluation_config(), poll_seconds=0.05,
                       timeout_seconds=120)))
  watcher.start()
  deadline = time.monotonic() + 300
  while calls != [2, 4] or not evaluation.report_path(workdir, "val", 4).exists():
    assert time.monotonic() < deadline and watcher.is_alive()
    time.sleep(0.05)
  # The trainer finishes its last checkpoint: Orbax writes a temporary folder, then renames.
  shutil.copytree(final, workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1")
  time.sleep(0.3)
  (workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1").rename(workdir / "checkpoints" / "6")
  watcher.join(timeout=300)
  assert not watcher.is_alive()
  assert done == calls == [2, 4, 6]
  # A restarted watcher finds every report and does nothing.
  assert evaluation.watch(workdir, "val", evaluation_config()) == []
  assert calls == [2, 4, 6]


def _evaluate_copy(trained_workdir, tmp_path, *flags: str):
  """`python -m xray_jax.evaluate FLAGS` on a copy of the trained run; returns (copy, result)."""
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  result = subprocess.run(
      [sys.executable, "-m", "xray_jax.evaluate", f"--workdir={workdir}", *flags,
       "--alsologtostderr"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  return workdir, result


def test_evaluate_binary(trained_workdir, tmp_path):
  workdir, result = _evaluate_copy(trained_workdir, tmp_path, "--split=test", "--checkpoint=4",
                                   "--config=configs/pneumonia.py")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("test step 4 at 0.5: accuracy") == 1
  assert "operating point" not in result.stderr  # The fixed 0.5: the same figures.
  assert_each_log_line_once(result.stderr)
  assert "read only" not in result.stderr  # Orbax's note on read-only checkpoints.
  report = json.loads((workdir / "eval" / "test_step4.json").read_text())
  assert report["step"] == 4
  intervals = report["intervals"]  # Generated images are patients of their own.
  assert intervals["unit"] == "image" and intervals["groups"] == report["at_0.5"]["num_examples"]
  assert intervals["level"] == 0.95 and intervals["resamples"] == 1000
  positive = report["at_0.5"]["positive_class"]
  for name, value in (("accuracy", report["at_0.5"]["accuracy"]),
                      ("sensitivity", positive["recall"]),
                      ("roc_auc", positive["roc_auc"])):
    low, high = intervals["at_0.5"][name]
    assert low <= value <= high, name
  assert intervals["at_0.5"]["roc_auc"][0] < intervals["at_0.5"]["roc_auc"][1]
  low, high = intervals["at_0.5"]["accuracy"]
  assert f"accuracy {report['at_0.5']['accuracy']:.4f} ({low:.4f}-{high:.4f})" in result.stderr
  assert "test step 4 intervals: 95% percentile bootstrap, 1000 resamples" in result.stderr


def test_compare_pairs_two_checkpoints_on_the_same_images(trained_workdir, tmp_path):
  workdir, other = tmp_path / "work", tmp_path / "other"
  shutil.copytree(trained_workdir, workdir)
  shutil.copytree(trained_workdir, other)
  config = evaluation_config("fixed")
  config.update(fixed_threshold=0.5, bootstrap_resamples=200)
  found = evaluation.compare_runs(workdir, other, "test", (6, 2), config)
  ours = json.loads(evaluation.report_path(workdir, "test", 6).read_text())
  theirs = json.loads(evaluation.report_path(other, "test", 2).read_text())
  auc = found["a_minus_b"]["roc_auc"]
  assert auc["a"] == pytest.approx(ours["at_0.5"]["positive_class"]["roc_auc"])
  assert auc["b"] == pytest.approx(theirs["at_0.5"]["positive_class"]["roc_auc"])
  assert auc["difference"] == pytest.approx(auc["a"] - auc["b"])
  assert auc["low"] <= auc["difference"] <= auc["high"]
  assert found["a"]["step"] == 6 and found["b"]["step"] == 2 and found["resamples"] == 200
  written = workdir / "eval" / "compare_test_step6_vs_other_step2.json"
  assert json.loads(written.read_text()) == found
  itself = evaluation.compare_runs(workdir, workdir, "test", (6, 6), config)
  assert all(f["difference"] == 0 and f["low"] == f["high"] == 0
             for f in itself["a_minus_b"].values())
  # An ensemble against one of its members: its averaged probabilities are side A.
  members = [trained.load(other, 2, sharding.make_mesh())]
  ensemble = evaluation.compare_runs(workdir, other, "test", (6, 2), config, members=members)
  averaged = json.loads(evaluation.report_path(workdir, "ensemble_test", 6).read_text())
  assert ensemble["a"]["members"] == averaged["members"] == [f"{other}:2"]
  assert ensemble["a_minus_b"]["roc_auc"]["a"] == pytest.approx(
      averaged["at_0.5"]["positive_class"]["roc_auc"])
  assert (workdir / "eval" / "ensemble_compare_test_step6_vs_other_step2.json").is_file()


def test_compare_refuses_runs_on_different_images(trained_workdir, tmp_path):
  workdir, other = tmp_path / "work", tmp_path / "other"
  shutil.copytree(trained_workdir, workdir)
  shutil.copytree(trained_workdir, other)
  saved = json.loads((other / "config.json").read_text())
  shutil.copytree(saved["data"]["dir"], tmp_path / "other_data")
  next((tmp_path / "other_data" / "test").rglob("*.png")).unlink()
  saved["data"]["dir"] = str(tmp_path / "other_data")
  (other / "config.json").write_text(json.dumps(saved))
  config = evaluation_config("fixed")
  config.fixed_threshold = 0.5
  with pytest.raises(errors.DataError, match="different test images"):
    evaluation.compare_runs(workdir, other, "test", (6, 6), config)


def test_intervals_resample_patients_by_the_group_pattern():
  config = ml_collections.ConfigDict(dict(
      group_pattern=r"(?:^|/)(person\d+|(?:NORMAL2-)?IM-\d+)[_-][^/]*$"))
  records = [{"path": f"/d/test/{name}", "label": 0} for name in (
      "PNEUMONIA/person7_bacteria_1.jpeg", "PNEUMONIA/person7_virus_2.jpeg",
      "NORMAL/IM-0003-0001.jpeg", "NORMAL/NORMAL2-IM-0003-0001.jpeg")]
  assert evaluation.record_groups(records, config) == [
      "person7", "person7", "IM-0003", "NORMAL2-IM-0003"]


def test_watch_started_before_the_trainer_waits_for_the_run(trained_workdir, tmp_path):
  workdir = tmp_path / "work"  # Does not exist yet.
  done = []
  watcher = threading.Thread(target=lambda: done.extend(
      evaluation.watch(workdir, "val", evaluation_config(), poll_seconds=0.05,
                       timeout_seconds=300)))
  watcher.start()
  time.sleep(0.5)
  assert watcher.is_alive() and not done
  shutil.copytree(trained_workdir, tmp_path / "staging")  # The trainer starts: its run
  (tmp_path / "staging").rename(workdir)  # appears at once, complete.
  watcher.join(timeout=300)
  assert not watcher.is_alive()
  assert done == [2, 4, 6]


def test_stress_binary_reports_every_shift_and_the_mean(trained_workdir, tmp_path):
  workdir, result = _evaluate_copy(trained_workdir, tmp_path, "--stress", "--checkpoint=latest")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "eval" / "stress_step6.json").read_text())
  # No operating point was saved: the validation evaluation chose one first.
  point = json.loads(trained.operating_point_path(workdir, 6).read_text())
  assert report["threshold"] == point["threshold"]
  val = json.loads(evaluation.report_path(workdir, "val", 6).read_text())
  assert report["clean"]["at_0.5"]["roc_auc"] == pytest.approx(
      val["at_0.5"]["positive_class"]["roc_auc"])
  assert set(report["shifts"]) == set(shifts.SHIFTS)
  results = [r for by_severity in report["shifts"].values() for r in by_severity.values()]
  assert len(results) == 3 * len(shifts.SHIFTS)
  for at in ("at_0.5", "at_operating_point"):
    for score in stress.SCORES:
      values = [r[at][score] for r in results if r[at][score] is not None]
      assert report["mean"][at][score] == pytest.approx(np.mean(values))
  with PIL.Image.open(workdir / "eval" / "stress_step6.png") as image:
    assert image.format == "PNG" and min(image.size) > 100
  # The probabilities behind every score are kept for further analysis.
  saved = np.load(workdir / "eval" / "stress_step6.npz")
  assert len(saved.files) == 2 + len(results)  # labels, clean, each shift at each severity.
  blur = saved["blur_3"]
  assert blur.shape == (len(saved["labels"]), 2)
  assert report["shifts"]["blur"]["3"]["at_0.5"]["roc_auc"] == pytest.approx(
      sklearn.metrics.roc_auc_score(saved["labels"], blur[:, 1]))


def test_fixed_threshold_is_not_tuned_on_validation(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = evaluation_config("fixed")
  config.fixed_threshold = 0.5
  report = evaluation.evaluate_checkpoint(workdir, "test", "latest", config)
  assert report["operating_point"]["method"] == "fixed"
  assert report["operating_point"]["threshold"] == 0.5
  assert report["at_operating_point"]["accuracy"] == report["at_0.5"]["accuracy"]


def test_robust_threshold_is_chosen_over_the_shifted_validation_split(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = evaluation_config("robust")
  point = evaluation.evaluate_checkpoint(workdir, "val", "latest", config)["operating_point"]
  assert point["method"] == "robust"
  stress.stress_test(workdir, "latest", config)  # Keeps the same clean and shifted scores.
  saved = np.load(workdir / "eval" / "stress_step6.npz")
  scorings = [saved[key][:, 1] for key in saved.files if key != "labels"]
  assert len(scorings) == 1 + 3 * len(shifts.SHIFTS)
  assert point["threshold"] == metrics.robust_threshold(saved["labels"] == 1, scorings)


def test_the_final_step_comes_from_the_run_not_the_dataset(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = trained.load_config(workdir)
  config.data.dir = str(tmp_path / "moved")  # The images are no longer where they were.
  assert trained.final_step(workdir, config) == 6  # From run.json, written by the trainer.
  (workdir / workdir_lib.RUN).unlink()  # A run of an older version: counted from the data.
  with pytest.raises(errors.DataError, match="no such directory"):
    trained.final_step(workdir, config)


def test_a_run_saved_with_conv_impl_still_loads(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"]["conv_impl"] = "xla"  # As runs saved while models took it have it.
  (workdir / "config.json").write_text(json.dumps(saved))
  loaded = trained.load(workdir)
  assert "conv_impl" not in loaded.config.model
  np.testing.assert_array_equal(jax.tree.leaves(loaded.variables)[0],
                                jax.tree.leaves(trained.load(trained_workdir).variables)[0])


def _with_eval_sets(trained_workdir, tmp_path, eval_sets: str):
  """A copy of the trained run whose config names `eval_sets`."""
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["data"]["eval_sets"] = eval_sets
  (workdir / "config.json").write_text(json.dumps(config))
  return workdir


def test_operating_point_chosen_on_a_named_set_with_cross_fitted_figures(
    trained_workdir, tmp_path):
  workdir = _with_eval_sets(trained_workdir, tmp_path, "external=test")
  config = evaluation_config("youden")
  config.operating_point_split = "external"
  val = evaluation.evaluate_checkpoint(workdir, "val", "latest", config)
  # The point was chosen on the named set, whose report came first; validation only uses it.
  external = json.loads(evaluation.report_path(workdir, "external", 6).read_text())
  point = external["operating_point"]
  assert point["settings"]["split"] == "external" and val["operating_point"] == point
  assert "at_operating_point_crossfit" not in val

  rows = list(csv.DictReader((workdir / "eval" / "external_step6_predictions.csv").open()))
  scores = np.array([float(r["prob_PNEUMONIA"]) for r in rows])  # Rounded to 6 decimals.
  positive = np.array([r["label"] == "PNEUMONIA" for r in rows])
  chosen = lambda index, method="youden": pytest.approx(metrics.choose_threshold(
      positive[index], scores[index], method, config.target_sensitivity), abs=1e-6)
  assert point["threshold"] == chosen(slice(None))
  # Each fold is decided by the threshold chosen on the other folds' images alone.
  groups = [r["path"] for r in rows]  # No group pattern: each image is its own patient.
  folds = crossfit.patient_folds(groups)
  for fold, threshold in enumerate(point["crossfit_thresholds"]):
    assert threshold == chosen(folds != fold)
  called = scores >= np.round(point["crossfit_thresholds"], 6)[folds]
  crossfitted = external["at_operating_point_crossfit"]
  assert crossfitted["accuracy"] == pytest.approx(np.mean(called == positive))
  assert crossfitted["positive_class"]["recall"] == pytest.approx(np.mean(called[positive]))
  low, high = external["intervals"]["at_operating_point_crossfit"]["accuracy"]
  assert low <= crossfitted["accuracy"] <= high and low < high

  config.threshold_method = "sensitivity"  # Other settings: chosen anew, not read back.
  report = evaluation.evaluate_checkpoint(workdir, "val", "latest", config)
  assert report["operating_point"]["method"] == "sensitivity"
  assert report["operating_point"]["threshold"] == chosen(slice(None), "sensitivity")


def test_operating_point_split_must_be_val_or_a_named_set(trained_workdir, tmp_path):
  workdir = _with_eval_sets(trained_workdir, tmp_path, "external=test")
  config = evaluation_config()
  config.operating_point_split = "test"
  with pytest.raises(errors.ConfigError, match=r"evaluation.operating_point_split=test: "
                     r"expected val or a set of .*data.eval_sets \(external\)"):
    evaluation.evaluate_checkpoint(workdir, "val", "latest", config)
  assert not (workdir / "eval" / "val_step6.json").exists()
