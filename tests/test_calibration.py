"""Temperature scaling: its effect on probabilities and the fit on validation."""

import csv
import json
import shutil

import numpy as np
import pytest

from xray_jax import classifier, trained
from xray_jax.evaluators import calibration, evaluation


def _softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def test_temperature_softens_or_sharpens_without_reordering():
  probs = _softmax(np.random.default_rng(0).normal(size=(50, 3)) * 2)
  assert calibration.apply_temperature(probs, 1.0) is probs
  softer, sharper = (calibration.apply_temperature(probs, t) for t in (2.0, 0.5))
  for scaled in (softer, sharper):
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
  assert np.all(softer.max(axis=1) < probs.max(axis=1))
  assert np.all(sharper.max(axis=1) > probs.max(axis=1))


def test_fit_recovers_the_temperature_of_overconfident_predictions():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4000, 2)) * 1.5
  labels = np.array([rng.choice(2, p=p) for p in _softmax(logits)])
  overconfident = _softmax(3.0 * logits)  # Calibrated logits, multiplied by 3.
  fitted = calibration.fit_temperature(overconfident, labels)
  assert fitted == pytest.approx(3.0, rel=0.1)
  before = calibration.negative_log_likelihood(overconfident, labels)
  after = calibration.negative_log_likelihood(
      calibration.apply_temperature(overconfident, fitted), labels)
  assert after < before


@pytest.mark.slow
def test_temperature_is_fitted_on_validation_and_used_by_test_and_predict(
    trained_workdir, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  config = trained.load_config(workdir).evaluation
  config.temperature_scaling = True
  report = evaluation.evaluate_checkpoint(workdir, "test", "latest", config)
  point = json.loads(trained.operating_point_path(workdir, 6).read_text())
  assert point["temperature"] != 1.0 and report["operating_point"] == point
  rows = list(csv.DictReader((workdir / "eval" / "test_step6_predictions.csv").open()))
  probs = np.array([[float(r["prob_NORMAL"]), float(r["prob_PNEUMONIA"])] for r in rows])
  loaded = classifier.load(workdir)
  assert loaded.temperature == point["temperature"]
  records = [{"path": r["path"], "label": 0} for r in rows]
  np.testing.assert_allclose(loaded.predict_records(records), probs, atol=2e-6)
  loaded.temperature = 1.0
  np.testing.assert_allclose(
      calibration.apply_temperature(loaded.predict_records(records), point["temperature"]),
      probs, atol=2e-6)
  # The threshold was chosen on the scaled validation probabilities.
  val = json.loads(evaluation.report_path(workdir, "val", 6).read_text())
  val_rows = list(csv.DictReader((workdir / "eval" / "val_step6_predictions.csv").open()))
  val_probs = np.array([float(r["prob_PNEUMONIA"]) for r in val_rows])
  val_labels = np.array([r["label"] == "PNEUMONIA" for r in val_rows])
  predicted = val_probs >= point["threshold"] - 1e-6  # The CSV rounds to 6 decimals.
  recall = predicted[val_labels].mean()
  assert val["at_operating_point"]["positive_class"]["recall"] == pytest.approx(recall)
