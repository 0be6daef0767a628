"""Ensembles: evaluate and predict average the probabilities of several runs."""

import csv
import json
import shutil

import numpy as np
import pytest
from helpers import tiny_config

from xray_jax import classifier, errors, train, trained
from xray_jax.evaluators import evaluation

pytestmark = pytest.mark.slow


def _probs(path) -> np.ndarray:
  rows = list(csv.DictReader(path.open()))
  return np.array([[float(r["prob_NORMAL"]), float(r["prob_PNEUMONIA"])] for r in rows])


def test_evaluate_and_predict_average_the_members(trained_workdir, tmp_path):
  first = tmp_path / "first"
  shutil.copytree(trained_workdir, first)
  second = tmp_path / "second"
  config = tiny_config(trained_workdir.parent / "data", num_train_steps=6, seed=1)
  train.train_and_evaluate(config, str(second))
  evaluation_config = config.evaluation
  for workdir in (first, second):
    evaluation.evaluate_checkpoint(workdir, "test", "latest", evaluation_config)
  members = [trained.load(second)]
  report = evaluation.evaluate_checkpoint(first, "test", "latest", evaluation_config,
                                          members=members)
  assert report["members"] == [f"{second}:6"]
  ensemble = _probs(first / "eval" / "ensemble_test_step6_predictions.csv")
  singles = [_probs(w / "eval" / "test_step6_predictions.csv") for w in (first, second)]
  np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), atol=2e-6)
  point = json.loads(trained.operating_point_path(first, 6, "ensemble_").read_text())
  assert point["members"] == report["members"] and report["operating_point"] == point
  single_point = json.loads(trained.operating_point_path(first, 6).read_text())
  assert "members" not in single_point  # The single run's operating point is its own.
  assert (first / "eval" / "ensemble_val_step6.json").is_file()

  loaded = classifier.load(first, ensemble=[second])
  assert loaded.threshold == point["threshold"]
  rows = list(csv.DictReader((first / "eval" / "test_step6_predictions.csv").open()))
  records = [{"path": r["path"], "label": 0} for r in rows]
  np.testing.assert_allclose(loaded.predict_records(records), ensemble, atol=2e-6)
  assert classifier.load(first).threshold == single_point["threshold"]


def test_members_must_share_the_validation_images(trained_workdir, tmp_path):
  workdir, other = tmp_path / "work", tmp_path / "other"
  shutil.copytree(trained_workdir, workdir)
  shutil.copytree(trained_workdir, other)
  split_file = other / "data_split.json"
  saved = json.loads(split_file.read_text())
  saved["val"] = saved["val"][1:]
  split_file.write_text(json.dumps(saved))
  with pytest.raises(errors.DataError, match="validated on other images"):
    evaluation.evaluate_checkpoint(workdir, "val", "latest",
                                   trained.load_config(workdir).evaluation,
                                   members=[trained.load(other)])


def test_checkpoints_of_one_run_make_an_ensemble_each_counted_once(trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  evaluation_config = trained.load_config(workdir).evaluation
  singles = []
  for step in (2, 4, 6):
    evaluation.evaluate_checkpoint(workdir, "test", step, evaluation_config)
    singles.append(_probs(workdir / "eval" / f"test_step{step}_predictions.csv"))
  assert not np.allclose(singles[0], singles[2])  # The checkpoints differ.
  members = trained.load_members([f"{workdir}:2", f"{workdir}:4"], "latest")
  report = evaluation.evaluate_checkpoint(workdir, "test", "latest", evaluation_config,
                                          members=members)
  assert report["members"] == [f"{workdir}:2", f"{workdir}:4"]
  ensemble = _probs(workdir / "eval" / "ensemble_test_step6_predictions.csv")
  np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), atol=2e-6)
  loaded = classifier.load(workdir, ensemble=[f"{workdir}:2", f"{workdir}:4"])
  assert loaded.threshold == report["operating_point"]["threshold"]

  twice = trained.load_members([f"{workdir}:4", str(workdir)], 4)
  with pytest.raises(errors.DataError, match="step 4 is in the ensemble twice"):
    evaluation.evaluate_checkpoint(workdir, "test", 2, evaluation_config, members=twice)
  with pytest.raises(errors.DataError, match="step 6 is in the ensemble twice"):
    classifier.load(workdir, ensemble=[f"{workdir}:2", f"{workdir}:6"])
