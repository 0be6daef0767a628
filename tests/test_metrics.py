"""Host-side evaluation metrics agree with scikit-learn and with hand computations."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from xray_jax.evaluators import metrics


def binary_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Probabilities [N, 2] rounded to two decimals, so many scores tie."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  p1 = np.clip(np.round(rng.uniform(0, 0.7, n) + 0.3 * labels, 2), 0, 1)
  return np.stack([1 - p1, p1], axis=1), labels


def multiclass_data(n: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Probabilities [N, 3] from small integer counts, so scores tie within each column."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n)
  counts = rng.integers(1, 5, (n, 3)).astype(np.float64)
  counts[np.arange(n), labels] += rng.integers(0, 4, n)
  return counts / counts.sum(axis=1, keepdims=True), labels


DATASETS = {"binary": binary_data, "multiclass": multiclass_data}


def one_vs_rest_cases():
  for name, make in DATASETS.items():
    probs, labels = make()
    for c in range(probs.shape[1]):
      yield pytest.param(labels == c, probs[:, c], id=f"{name}-class{c}")


@pytest.mark.parametrize("make", DATASETS.values(), ids=DATASETS.keys())
def test_confusion_matrix_matches_sklearn(make):
  probs, labels = make()
  predictions = probs.argmax(axis=1)
  num_classes = probs.shape[1]
  expected = skm.confusion_matrix(labels, predictions, labels=range(num_classes))
  np.testing.assert_array_equal(metrics.confusion_matrix(labels, predictions, num_classes),
                                expected)


def test_confusion_matrix_counts_absent_classes_and_rejects_out_of_range():
  matrix = metrics.confusion_matrix([0, 0, 2], [0, 2, 2], 4)
  np.testing.assert_array_equal(matrix, [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
  with pytest.raises(ValueError, match="predictions"):
    metrics.confusion_matrix([0, 1], [0, 3], 3)


@pytest.mark.parametrize(("is_positive", "scores"), one_vs_rest_cases())
def test_roc_curve_matches_sklearn(is_positive, scores):
  fpr, tpr, thresholds = metrics.roc_curve(is_positive, scores)
  sk_fpr, sk_tpr, sk_thresholds = skm.roc_curve(is_positive, scores, drop_intermediate=False)
  # Ties leave fewer operating points than examples, so the tie handling is exercised.
  assert len(thresholds) < len(scores)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_array_equal(thresholds, sk_thresholds)
  auc = skm.roc_auc_score(is_positive, scores)
  assert metrics.roc_auc(is_positive, scores) == pytest.approx(auc)
  assert np.trapezoid(tpr, fpr) == pytest.approx(auc)


@pytest.mark.parametrize(("is_positive", "scores"), one_vs_rest_cases())
def test_precision_recall_and_average_precision_match_sklearn(is_positive, scores):
  precision, recall, thresholds = metrics.precision_recall_curve(is_positive, scores)
  sk_precision, sk_recall, sk_thresholds = skm.precision_recall_curve(is_positive, scores)
  np.testing.assert_allclose(precision, sk_precision)
  np.testing.assert_allclose(recall, sk_recall)
  np.testing.assert_array_equal(thresholds, sk_thresholds)
  assert metrics.average_precision(is_positive, scores) == pytest.approx(
      skm.average_precision_score(is_positive, scores))


def test_average_precision_by_hand():
  # Ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = 0.5 * 1 + 0.5 * (2 / 3).
  assert metrics.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
  # A tie between a positive and a negative counts as one operating point at precision 1/2.
  assert metrics.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_curves_without_one_class_follow_sklearn():
  is_positive, scores = np.zeros(5, bool), np.array([0.1, 0.4, 0.4, 0.6, 0.9])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sk_fpr, sk_tpr, _ = skm.roc_curve(is_positive, scores, drop_intermediate=False)
    sk_ap = skm.average_precision_score(is_positive, scores)
    _, sk_recall, _ = skm.precision_recall_curve(is_positive, scores)
  fpr, tpr, _ = metrics.roc_curve(is_positive, scores)
  np.testing.assert_allclose(fpr, sk_fpr)
  assert np.isnan(tpr).all() and np.isnan(sk_tpr).all()
  np.testing.assert_allclose(metrics.precision_recall_curve(is_positive, scores)[1], sk_recall)
  assert metrics.average_precision(is_positive, scores) == sk_ap == 0.0
  assert np.isnan(metrics.roc_auc(is_positive, scores))


@pytest.mark.parametrize("make", DATASETS.values(), ids=DATASETS.keys())
def test_brier_score_matches_sklearn(make):
  probs, labels = make()
  if probs.shape[1] == 2:
    expected = skm.brier_score_loss(labels, probs[:, 1])
    assert expected == pytest.approx(np.mean((probs[:, 1] - labels) ** 2))
  else:
    expected = np.mean(np.sum((probs - np.eye(3)[labels]) ** 2, axis=1))
    assert expected == pytest.approx(skm.brier_score_loss(labels, probs, labels=[0, 1, 2]))
  assert metrics.brier_score(probs, labels) == pytest.approx(expected)


def test_expected_calibration_error_is_zero_when_calibrated():
  # In each group the top-label confidence c equals the fraction of correct predictions.
  probs, labels = [], []
  for confidence in (0.4, 0.55, 0.65, 0.75, 0.85, 0.95, 1.0):
    num_correct = round(confidence * 20)
    row = [confidence, (1 - confidence) / 2, (1 - confidence) / 2]
    probs += [row] * 20
    labels += [0] * num_correct + [1] * (20 - num_correct)
  probs, labels = np.array(probs), np.array(labels)
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
  # Relabelling one correct example breaks calibration by 1/N in one bin.
  labels[0] = 2
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(1 / len(labels))


def test_expected_calibration_error_by_hand():
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.55, 0.45]])
  labels = np.array([0, 1, 1, 1, 1])
  # Four bins of width 0.25. Confidences 0.9, 0.8 (bin 3; correct 1 of 2), 0.7, 0.6, 0.55
  # (bin 2; correct 2 of 3). ECE = 2/5 * |0.5 - 0.85| + 3/5 * |2/3 - 0.6166...|.
  expected = 2 / 5 * abs(0.5 - 0.85) + 3 / 5 * abs(2 / 3 - (0.7 + 0.6 + 0.55) / 3)
  assert metrics.expected_calibration_error(probs, labels, num_bins=4) == pytest.approx(expected)
  counts, confidence, accuracy = metrics.reliability_bins(probs, labels, num_bins=4)
  np.testing.assert_array_equal(counts, [0, 0, 3, 2])
  np.testing.assert_allclose(confidence[2:], [(0.7 + 0.6 + 0.55) / 3, 0.85])
  np.testing.assert_allclose(accuracy[2:], [2 / 3, 0.5])


def test_choose_threshold_known_answer():
  scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
  is_positive = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1], bool)
  # At 0.6: TPR 4/5, FPR 0, J = 0.8; at 0.4: TPR 1, FPR 1/4, J = 0.75.
  assert metrics.choose_threshold(is_positive, scores, "youden") == 0.6
  assert metrics.choose_threshold(is_positive, scores, "sensitivity", 0.95) == 0.4
  assert metrics.choose_threshold(is_positive, scores, "sensitivity", 0.8) == 0.6
  assert metrics.choose_threshold(is_positive, scores, "sensitivity", 0.5) == 0.7
  with pytest.raises(ValueError, match="bogus"):
    metrics.choose_threshold(is_positive, scores, "bogus")
  with pytest.raises(ValueError, match="positive"):
    metrics.choose_threshold(np.zeros(9, bool), scores, "sensitivity")


def test_robust_threshold_maximizes_the_mean_youden_index_over_scorings():
  scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
  is_positive = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1], bool)
  # One scoring: Youden's own choice.
  assert metrics.robust_threshold(is_positive, [scores]) == 0.6
  # A shifted scoring that raises the negatives: 0.6 now costs false positives there.
  shifted = np.where(is_positive, scores, scores + 0.25)
  rng = np.random.default_rng(0)
  sets = [scores, shifted, np.clip(scores + rng.normal(0, 0.1, 9), 0, 1)]
  chosen = metrics.robust_threshold(is_positive, sets)

  def mean_youden(t):
    return np.mean([(s[is_positive] >= t).mean() - (s[~is_positive] >= t).mean() for s in sets])

  candidates = np.unique(np.concatenate(sets))
  best = max(mean_youden(t) for t in candidates)
  assert mean_youden(chosen) == pytest.approx(best)
  assert chosen == max(t for t in candidates if mean_youden(t) >= best - 1e-12)  # Highest tie.
  probs, labels = binary_data()  # One scoring of many examples: Youden's choice again.
  assert metrics.robust_threshold(labels == 1, [probs[:, 1]]) == metrics.choose_threshold(
      labels == 1, probs[:, 1], "youden")
  with pytest.raises(ValueError, match="positive and negative"):
    metrics.robust_threshold(np.ones(9, bool), sets)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_choose_threshold_meets_sensitivity_at_fewest_false_positives(target):
  probs, labels = binary_data()
  scores, is_positive = probs[:, 1], labels == 1
  threshold = metrics.choose_threshold(is_positive, scores, "sensitivity", target)
  assert np.mean(scores[is_positive] >= threshold) >= target
  # The next higher distinct score, which admits fewer false positives, misses the target.
  higher = scores[scores > threshold]
  if higher.size:
    assert np.mean(scores[is_positive] >= higher.min()) < target


def test_choose_threshold_youden_maximizes_j():
  probs, labels = binary_data()
  scores, is_positive = probs[:, 1], labels == 1

  def youden(threshold):
    predicted = scores >= threshold
    return predicted[is_positive].mean() - predicted[~is_positive].mean()

  best = max(youden(t) for t in np.unique(scores))
  assert youden(metrics.choose_threshold(is_positive, scores, "youden")) == pytest.approx(best)


def sklearn_per_class(labels, predictions, probs, c):
  is_positive = labels == c
  return {
      "precision": skm.precision_score(is_positive, predictions == c, zero_division=0),
      "recall": skm.recall_score(is_positive, predictions == c, zero_division=0),
      "specificity": skm.recall_score(~is_positive, predictions != c, zero_division=0),
      "f1": skm.f1_score(is_positive, predictions == c, zero_division=0),
      "roc_auc": skm.roc_auc_score(is_positive, probs[:, c]),
      "average_precision": skm.average_precision_score(is_positive, probs[:, c]),
      "support": int(is_positive.sum()),
  }


def check_report(report, probs, labels, predictions, class_names):
  num_classes = len(class_names)
  json.dumps(report, allow_nan=False)
  assert report["num_examples"] == len(labels)
  assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
  assert report["confusion_matrix"] == skm.confusion_matrix(
      labels, predictions, labels=range(num_classes)).tolist()
  for c, name in enumerate(class_names):
    assert report["per_class"][name] == pytest.approx(
        sklearn_per_class(labels, predictions, probs, c))
  macro = report["macro"]
  for key, scorer in (("precision", skm.precision_score), ("recall", skm.recall_score),
                      ("f1", skm.f1_score)):
    assert macro[key] == pytest.approx(scorer(labels, predictions, average="macro",
                                              labels=range(num_classes), zero_division=0))
  assert macro["roc_auc"] == pytest.approx(
      np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in range(num_classes)]))
  assert macro["average_precision"] == pytest.approx(
      skm.average_precision_score(np.eye(num_classes)[labels], probs, average="macro"))
  assert report["expected_calibration_error"] == pytest.approx(
      metrics.expected_calibration_error(probs, labels))


@pytest.mark.parametrize("threshold", [None, 0.3, 0.75])
def test_classification_report_binary_matches_sklearn(threshold):
  probs, labels = binary_data()
  report = metrics.classification_report(probs, labels, ["NORMAL", "PNEUMONIA"], threshold)
  used = 0.5 if threshold is None else threshold
  predictions = (probs[:, 1] >= used).astype(int)
  check_report(report, probs, labels, predictions, ["NORMAL", "PNEUMONIA"])
  assert report["brier_score"] == pytest.approx(skm.brier_score_loss(labels, probs[:, 1]))
  positive = report["positive_class"]
  assert positive["threshold"] == used and positive["name"] == "PNEUMONIA"
  assert positive["recall"] == pytest.approx(skm.recall_score(labels, predictions))
  assert positive["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))


def test_classification_report_multiclass_matches_sklearn():
  probs, labels = multiclass_data()
  names = ["a", "b", "c"]
  report = metrics.classification_report(probs, labels, names)
  check_report(report, probs, labels, probs.argmax(axis=1), names)
  assert report["macro"]["roc_auc"] == pytest.approx(
      skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  assert report["brier_score"] == pytest.approx(
      skm.brier_score_loss(labels, probs, labels=[0, 1, 2]))
  assert "positive_class" not in report
  with pytest.raises(ValueError, match="binary"):
    metrics.classification_report(probs, labels, names, threshold=0.5)
  with pytest.raises(ValueError, match="class names"):
    metrics.classification_report(probs, labels, names[:2])


def test_classification_report_single_class_serializes_nan_as_none():
  probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
  report = metrics.classification_report(probs, np.ones(3, int), ["NORMAL", "PNEUMONIA"])
  json.dumps(report, allow_nan=False)
  assert report["per_class"]["PNEUMONIA"]["roc_auc"] is None
  assert report["macro"]["roc_auc"] is None
  assert report["per_class"]["NORMAL"]["average_precision"] is None
  assert report["positive_class"]["average_precision"] == pytest.approx(1.0)
  # Class 0 is never true and predicted once: precision 0/1, recall 0/0 -> 0.0.
  assert report["per_class"]["NORMAL"]["precision"] == 0.0
  assert report["per_class"]["NORMAL"]["recall"] == 0.0
  assert report["accuracy"] == pytest.approx(2 / 3)
