"""Bootstrap intervals: exact where they can be checked, and covering known values at about
their level on synthetic data, with patients resampled whole."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xray_jax.evaluators import bootstrap, metrics


def _binormal(rng, num_pos: int, num_neg: int, separation: float):
  """Scores N(separation, 1) for positives and N(0, 1) for negatives: AUC Phi(sep / sqrt 2)."""
  labels = np.r_[np.ones(num_pos, bool), np.zeros(num_neg, bool)]
  return labels, rng.normal(size=len(labels)) + separation * labels


@pytest.mark.parametrize("prevalence", [0.3, 0.7])  # Either class can be the smaller.
@pytest.mark.parametrize("decimals", [1, 6])  # Many ties, or none.
def test_weighted_auc_equals_the_plain_auc_of_the_repeated_images(prevalence, decimals):
  rng = np.random.default_rng(0)
  labels = rng.random(60) < prevalence
  scores = np.round(rng.random(60), decimals)
  weights = rng.integers(0, 4, size=(5, 60)).astype(float)
  found = bootstrap.weighted_roc_auc(labels, scores, weights)
  for row, auc in zip(weights, found, strict=True):
    repeat = np.repeat(np.arange(60), row.astype(int))
    assert auc == pytest.approx(roc_auc_score(labels[repeat], scores[repeat]), abs=1e-12)
  unit = bootstrap.weighted_roc_auc(labels, scores, np.ones((1, 60)))[0]
  assert unit == pytest.approx(metrics.roc_auc(labels, scores), abs=1e-12)
  only_negatives = np.where(labels, 0.0, 1.0)[None]
  assert np.isnan(bootstrap.weighted_roc_auc(labels, scores, only_negatives)).all()


def test_weights_draw_whole_groups():
  groups = ["a", "a", "a", "b", "c", "c"]
  weights = bootstrap.resample_weights(groups, 50, seed=1)
  assert weights.shape == (50, 6)
  assert np.all(weights[:, 0] == weights[:, 2]) and np.all(weights[:, 4] == weights[:, 5])
  # Three groups drawn each time: the weights of one image per group add up to 3.
  assert np.all(weights[:, [0, 3, 4]].sum(axis=1) == 3)
  assert bootstrap.unit(groups) == "patient" and bootstrap.unit(["a", "b"]) == "image"


def test_intervals_cover_the_true_auc_and_accuracy_at_about_95_percent():
  rng = np.random.default_rng(0)
  separation = 1.5
  true_auc = 0.5 * (1 + math.erf(separation / 2))  # Phi(separation / sqrt(2)).
  true_accuracy = 0.5 * (1 + math.erf(separation / 2 / math.sqrt(2)))  # At the midpoint.
  hits = {"roc_auc": 0, "accuracy": 0, "sensitivity": 0, "specificity": 0}
  repeats = 200
  for _ in range(repeats):
    labels, scores = _binormal(rng, 100, 100, separation)
    found = bootstrap.confidence_intervals(labels, scores, separation / 2,
                                           [str(i) for i in range(200)], 400,
                                           seed=int(rng.integers(1 << 30)))
    for name, truth in (("roc_auc", true_auc), ("accuracy", true_accuracy),
                        ("sensitivity", true_accuracy), ("specificity", true_accuracy)):
      low, high = found[name]
      hits[name] += low <= truth <= high
  for name, count in hits.items():
    assert 0.89 <= count / repeats <= 0.99, (name, count)


def test_patients_resampled_whole_cover_where_images_alone_do_not():
  """Five films a patient that share most of their score: image resampling undercovers."""
  rng = np.random.default_rng(1)
  separation, patients, films = 1.0, 60, 5
  true_auc = 0.5 * (1 + math.erf(separation / 2))  # Score variance 0.9 + 0.1 = 1.
  groups = [f"p{i}" for i in range(patients) for _ in range(films)]
  hits = {"patient": 0, "image": 0}
  repeats = 150
  for _ in range(repeats):
    patient_label = np.arange(patients) < patients // 2
    patient_effect = rng.normal(size=patients) * math.sqrt(0.9)
    labels = np.repeat(patient_label, films)
    scores = (np.repeat(patient_effect + separation * patient_label, films)
              + rng.normal(size=patients * films) * math.sqrt(0.1))
    seed = int(rng.integers(1 << 30))
    for unit, unit_groups in (("patient", groups), ("image", [str(i) for i in range(300)])):
      low, high = bootstrap.confidence_intervals(labels, scores, 0.5, unit_groups, 300,
                                                 seed=seed)["roc_auc"]
      hits[unit] += low <= true_auc <= high
  assert hits["patient"] / repeats >= 0.88
  assert hits["image"] / repeats <= hits["patient"] / repeats - 0.2


def test_paired_difference_finds_a_better_model_and_no_difference_with_itself():
  rng = np.random.default_rng(2)
  labels, good = _binormal(rng, 150, 150, 2.0)
  weak = good + rng.normal(size=300) * 2.0
  groups = [str(i) for i in range(300)]
  better = bootstrap.paired_difference(labels, good, weak, (1.0, 1.0), groups, 500)
  auc = better["roc_auc"]
  assert auc["a"] == pytest.approx(metrics.roc_auc(labels, good))
  assert auc["difference"] == pytest.approx(auc["a"] - auc["b"])
  assert 0 < auc["low"] < auc["difference"] < auc["high"] and auc["p_value"] < 0.01
  same = bootstrap.paired_difference(labels, good, good, (1.0, 1.0), groups, 500)
  for name in bootstrap.FIGURES:
    assert same[name]["difference"] == 0 and same[name]["low"] == same[name]["high"] == 0
    assert same[name]["p_value"] == 1.0
