"""Classification metrics computed on the host from predicted probabilities."""

import numpy as np


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
  """Accuracy, cross-entropy and ROC AUC (macro one-vs-rest beyond two classes)."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  num_classes = probs.shape[1]
  if num_classes == 2:
    auc = roc_auc(labels == 1, probs[:, 1])
  else:
    auc = float(np.nanmean([roc_auc(labels == c, probs[:, c]) for c in range(num_classes)]))
  true_probs = probs[np.arange(len(labels)), labels]
  return {
      "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
      "loss": float(-np.mean(np.log(np.clip(true_probs, 1e-12, None)))),
      "auc": auc,
      "num_examples": len(labels),
  }
