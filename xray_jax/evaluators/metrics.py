"""Classification metrics computed on the host from predicted probabilities."""

import re
from collections.abc import Sequence

import numpy as np

from xray_jax import labels as labels_lib


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties half.

  NaN when only one class is present.
  """
  is_positive = np.asarray(is_positive, bool)
  num_pos, num_neg = is_positive.sum(), (~is_positive).sum()
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = np.asarray(scores)[order]
  ranks = np.empty(len(scores), np.float64)
  # Average ranks (1-based) over runs of tied scores.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(scores)]
  for start, end in zip(starts, ends, strict=True):
    ranks[order[start:end]] = (start + end + 1) / 2
  rank_sum = ranks[is_positive].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def summarize(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy, negative log-likelihood (plain: no label smoothing or class weights, unlike
the training loss) and ROC AUC (macro one-vs-rest beyond two classes)."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  num_classes = probs.shape[1]
  if num_classes == 2:
    auc = roc_auc(labels == 1, probs[:, 1])
  else:
    auc = float(np.nanmean([roc_auc(labels == c, probs[:, c]) for c in range(num_classes)]))
  true_probs = probs[np.arange(len(labels)), labels]
  return {
      "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
      "nll": float(-np.mean(np.log(np.clip(true_probs, 1e-12, None)))),
      "auc": auc,
      "num_examples": len(labels),
  }


def finding_aucs(probs: np.ndarray, labels: np.ndarray) -> list[float]:
  """Each finding's ROC AUC over its present labels (1 or 0; NaN and -1 are missing), for
  probabilities and labels [N, K]; NaN where one class is absent."""
  present = labels_lib.present(labels)
  return [roc_auc(labels[present[:, k], k] == 1, probs[present[:, k], k])
          for k in range(labels.shape[1])]


def summarize_findings(probs: np.ndarray, labels: np.ndarray,
                       finding_names: Sequence[str] = ()) -> dict[str, float]:
  """`summarize` of the multilabel task, over the present labels: `auc` (the mean of the
  findings' ROC AUCs, those with both classes present), `auc_micro` (all labels pooled),
  `accuracy` at 0.5, `nll` (mean binary cross-entropy), `num_examples`, and given
  `finding_names` (one per column), each finding's AUC as `auc_NAME`."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
  if probs.ndim != 2 or probs.shape != labels.shape:
    raise ValueError(f"Expected probs and labels [N, K]; got {probs.shape} and {labels.shape}.")
  aucs = finding_aucs(probs, labels)
  defined = [auc for auc in aucs if not np.isnan(auc)]
  present = labels_lib.present(labels)
  scores, truth = probs[present], labels[present] == 1
  clipped = np.clip(scores, 1e-12, 1 - 1e-12)
  log_likelihood = np.where(truth, np.log(clipped), np.log1p(-clipped))
  named = {f"auc_{metric_name(name)}": auc
           for name, auc in zip(finding_names, aucs, strict=True)} if finding_names else {}
  return {
      "accuracy": float(np.mean((scores >= 0.5) == truth)) if truth.size else float("nan"),
      "nll": float(-np.mean(log_likelihood)) if truth.size else float("nan"),
      "auc": float(np.mean(defined)) if defined else float("nan"),
      "auc_micro": roc_auc(truth, scores),
      "num_examples": len(labels),
      **named,
  }


def metric_name(name: str) -> str:
  """A finding's name in a metric's name: each run of characters other than letters,
  digits and _ becomes one _ ("Pleural Effusion" -> "Pleural_Effusion")."""
  return re.sub(r"\W+", "_", name)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [C, C] with rows the true class and columns the predicted class."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  if labels.shape != predictions.shape:
    raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape.")
  for name, values in (("labels", labels), ("predictions", predictions)):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"{name} must lie in [0, {num_classes}).")
  counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def _counts_at_thresholds(is_positive: np.ndarray, scores: np.ndarray):
  """(false positives, true positives, thresholds) at each distinct score, descending."""
  is_positive = np.asarray(is_positive, bool).ravel()
  scores = np.asarray(scores, np.float64).ravel()
  if is_positive.shape != scores.shape:
    raise ValueError(f"is_positive {is_positive.shape} and scores {scores.shape} differ in shape.")
  if not len(scores):
    raise ValueError("Curves need at least one example.")
  order = np.argsort(scores, kind="mergesort")[::-1]
  scores, is_positive = scores[order], is_positive[order]
  # Only the last index of each run of tied scores is an operating point: a threshold
  # admits all or none of the examples sharing its score.
  last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  tps = np.cumsum(is_positive)[last].astype(np.float64)
  return last + 1 - tps, tps, scores[last]


def roc_curve(is_positive: np.ndarray,
              scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) like sklearn's roc_curve with drop_intermediate=False.

  One point per distinct score (descending) after a leading (0, 0) point at threshold inf;
  fpr (tpr) is all NaN when there are no negatives (positives).
  """
  fps, tps, thresholds = _counts_at_thresholds(is_positive, scores)
  fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
  fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
  tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
  return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(is_positive: np.ndarray,
                           scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(precision, recall, thresholds) like sklearn's precision_recall_curve.

  Thresholds ascend over the distinct scores; precision and recall carry a final (1, 0)
  point with no threshold. Recall is all ones when there are no positives, as in sklearn.
  """
  fps, tps, thresholds = _counts_at_thresholds(is_positive, scores)
  predicted = tps + fps
  precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted > 0)
  recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
  return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float:
  """Step-wise sum of precision over recall increments (sklearn's average_precision_score).

  No interpolation; 0.0 when there are no positives.
  """
  precision, recall, _ = precision_recall_curve(is_positive, scores)
  # Clip the -0.0 that rounding can produce, as sklearn does.
  return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(f"Expected probs [N, C] and labels [N]; got {probs.shape} and {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
    raise ValueError(f"labels must lie in [0, {probs.shape[1]}).")
  return probs, labels


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean over examples of the summed squared error between probs [N, C] and one-hot labels.

  For two classes it is halved, giving mean (p1 - y)^2 as in sklearn's brier_score_loss.
  """
  probs, labels = _check_probs(probs, labels)
  one_hot = np.eye(probs.shape[1])[labels]
  score = float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))
  # With two classes both columns carry the same error, so the sum double-counts it.
  return score / 2 if probs.shape[1] == 2 else score


def reliability_bins(probs: np.ndarray, labels: np.ndarray,
                     num_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(count, mean confidence, accuracy) per equal-width bin of top-label confidence.

  Bin i covers (i / num_bins, (i + 1) / num_bins]; empty bins report 0 confidence and accuracy.
  """
  probs, labels = _check_probs(probs, labels)
  if num_bins < 1:
    raise ValueError(f"num_bins must be positive; got {num_bins}.")
  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bins = np.searchsorted(edges[1:-1], confidence, side="left")
  counts = np.bincount(bins, minlength=num_bins).astype(np.float64)
  safe = np.maximum(counts, 1)
  mean_confidence = np.bincount(bins, confidence, minlength=num_bins) / safe
  accuracy = np.bincount(bins, correct, minlength=num_bins) / safe
  return counts.astype(np.int64), mean_confidence, accuracy


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
  """Sum over bins of (bin count / N) * |accuracy - mean confidence|, top-label confidence."""
  counts, mean_confidence, accuracy = reliability_bins(probs, labels, num_bins)
  if not counts.sum():
    return float("nan")
  return float(np.sum(counts * np.abs(accuracy - mean_confidence)) / counts.sum())


# How the evaluation job chooses the decision threshold of two classes on validation
# (config.evaluation.threshold_method): a fixed value, choose_threshold's two methods, or
# robust_threshold over the validation split clean and under every stress-test shift.
THRESHOLD_METHODS = ("fixed", "youden", "sensitivity", "robust")
CHOSEN_METHODS = ("youden", "sensitivity")  # The methods of choose_threshold.


def choose_threshold(is_positive: np.ndarray, scores: np.ndarray, method: str,
                     target_sensitivity: float = 0.95) -> float:
  """An operating threshold; an example is predicted positive when score >= threshold.

  "youden" maximizes TPR - FPR (ties go to the highest threshold); "sensitivity" is the
  highest threshold whose sensitivity reaches target_sensitivity, i.e. the fewest false
  positives that meet the target.
  """
  if method not in CHOSEN_METHODS:
    raise ValueError(f"Unknown threshold method {method!r}; expected 'youden' or 'sensitivity'.")
  fpr, tpr, thresholds = roc_curve(is_positive, scores)
  # Drop the leading infinite threshold: it predicts nothing positive and is no usable cut.
  fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
  if np.isnan(tpr).any():
    raise ValueError(f"Threshold method {method!r} needs at least one positive example.")
  if method == "youden":
    if np.isnan(fpr).any():
      raise ValueError("Threshold method 'youden' needs at least one negative example.")
    return float(thresholds[np.argmax(tpr - fpr)])
  if not 0.0 < target_sensitivity <= 1.0:
    raise ValueError(f"target_sensitivity must lie in (0, 1]; got {target_sensitivity}.")
  # tpr is non-decreasing as thresholds descend and ends at 1, so a first hit always exists.
  return float(thresholds[np.argmax(tpr >= target_sensitivity)])


def robust_threshold(is_positive: np.ndarray, score_sets: Sequence[np.ndarray]) -> float:
  """The threshold with the highest mean Youden index (TPR - FPR) over several scorings of
  the same examples, such as the validation split clean and under acquisition shifts; ties
  go to the highest threshold. Candidates are the scores that occur."""
  candidates = np.unique(np.concatenate(score_sets))
  mean_youden = np.zeros(len(candidates))
  for scores in score_sets:
    for group, sign in ((scores[is_positive], 1.0), (scores[~is_positive], -1.0)):
      if not len(group):
        raise ValueError("Threshold method 'robust' needs positive and negative examples.")
      at_or_above = len(group) - np.searchsorted(np.sort(group), candidates, side="left")
      mean_youden += sign * at_or_above / len(group) / len(score_sets)
  best = np.flatnonzero(mean_youden >= mean_youden.max() - 1e-12)
  return float(candidates[best[-1]])


def _ratio(numerator: float, denominator: float) -> float:
  """numerator / denominator, or 0.0 when the denominator is 0 (sklearn's zero_division=0)."""
  return float(numerator / denominator) if denominator else 0.0


def _one_vs_rest(matrix: np.ndarray, c: int, is_positive: np.ndarray,
                 scores: np.ndarray) -> dict[str, float]:
  """Precision, recall, specificity, F1, ROC AUC, AP and support of class c against the rest."""
  tp = matrix[c, c]
  fp = matrix[:, c].sum() - tp
  fn = matrix[c, :].sum() - tp
  tn = matrix.sum() - tp - fp - fn
  return {
      "precision": _ratio(tp, tp + fp),
      "recall": _ratio(tp, tp + fn),
      "specificity": _ratio(tn, tn + fp),
      "f1": _ratio(2 * tp, 2 * tp + fp + fn),
      "roc_auc": roc_auc(is_positive, scores),
      # AP is undefined without positives; NaN (None in the report) rather than sklearn's 0.
      "average_precision": (average_precision(is_positive, scores)
                            if is_positive.any() else float("nan")),
      "support": int(tp + fn),
  }


def _mean_ignoring_nan(values: list[float]) -> float:
  """Mean of the non-NaN values (classes absent from the data have NaN AUC and AP), else NaN."""
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else float("nan")


def json_safe(value):
  """Nested dicts/lists with NumPy scalars as Python numbers and NaN as None."""
  if isinstance(value, dict):
    return {key: json_safe(item) for key, item in value.items()}
  if isinstance(value, list | tuple | np.ndarray):
    return [json_safe(item) for item in value]
  if isinstance(value, np.integer | np.bool_):
    return value.item()
  if isinstance(value, float | np.floating):
    return None if np.isnan(value) else float(value)
  return value


def classification_report(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                          threshold: float | np.ndarray | None = None) -> dict:
  """JSON-serializable metrics of probs [N, C] against labels [N]; NaN becomes None.

  Predictions are the argmax, or for two classes class 1 when p1 >= threshold (default 0.5;
  an array [N] gives each example its own, as cross-fitting does). Binary reports add a
  "positive_class" block for class 1 with the threshold used (None where per example).
  """
  probs, labels = _check_probs(probs, labels)
  num_classes = probs.shape[1]
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} probability columns.")
  if num_classes == 2:
    threshold = np.asarray(0.5 if threshold is None else threshold, np.float64)
    predictions = (probs[:, 1] >= threshold).astype(np.int64)
  elif threshold is not None:
    raise ValueError(f"threshold applies to binary problems only; got {num_classes} classes.")
  else:
    predictions = probs.argmax(axis=1)
  matrix = confusion_matrix(labels, predictions, num_classes)
  per_class = {name: _one_vs_rest(matrix, c, labels == c, probs[:, c])
               for c, name in enumerate(class_names)}
  macro = {key: _mean_ignoring_nan([metrics[key] for metrics in per_class.values()])
           for key in ("precision", "recall", "specificity", "f1", "roc_auc", "average_precision")}
  macro["support"] = len(labels)
  report = {
      "num_examples": len(labels),
      "class_names": list(class_names),
      "accuracy": _ratio(np.trace(matrix), len(labels)),
      "per_class": per_class,
      "macro": macro,
      "confusion_matrix": matrix.tolist(),
      "brier_score": brier_score(probs, labels) if len(labels) else float("nan"),
      "expected_calibration_error": expected_calibration_error(probs, labels),
  }
  if num_classes == 2:
    report["positive_class"] = {"name": class_names[1], **per_class[class_names[1]],
                                "threshold": float(threshold) if threshold.ndim == 0 else None}
  return json_safe(report)
