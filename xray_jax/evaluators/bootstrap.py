"""Bootstrap confidence intervals of a binary classifier's figures, and a paired comparison
of two classifiers on the same images.

Resampling draws whole patients (groups) with replacement, so a patient's images stay
together: their errors are correlated, and resampling images alone would give intervals
that are too narrow. A resample is a vector of per-image weights (how often each image's
patient was drawn), which lets every figure of every resample be computed at once.
"""

from collections.abc import Sequence

import numpy as np

FIGURES = ("roc_auc", "accuracy", "sensitivity", "specificity")
_CHUNK = 200  # Resamples computed together (memory: CHUNK x images weights).


def resample_weights(groups: Sequence[str], num_resamples: int,
                     seed: int = 0) -> np.ndarray:
  """[num_resamples, N] weights: per image, how many times its group was drawn when drawing
  as many groups as there are, with replacement."""
  names, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=num_resamples)
  return counts[:, index].astype(np.float64)


def weighted_roc_auc(is_positive: np.ndarray, scores: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
  """ROC AUC (ties count half) of each row of `weights` [B, N] over the same images: NaN
  where a row weighs no positive or no negative."""
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  positive = is_positive[order]
  w = weights[:, order]
  pos_by_run = np.add.reduceat(w * positive, starts, axis=1)
  neg_by_run = np.add.reduceat(w * ~positive, starts, axis=1)
  neg_below = np.cumsum(neg_by_run, axis=1) - neg_by_run
  wins = np.sum(pos_by_run * (neg_below + 0.5 * neg_by_run), axis=1)
  total = pos_by_run.sum(axis=1) * neg_by_run.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, wins / np.where(total > 0, total, 1), np.nan)


def _figures(is_positive: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray,
             weights: np.ndarray) -> dict[str, np.ndarray]:
  """Each figure of FIGURES under each row of `weights` [B, N]."""
  called = scores >= threshold
  correct = called == is_positive
  with np.errstate(invalid="ignore", divide="ignore"):
    return {
        "roc_auc": weighted_roc_auc(is_positive, scores, weights),
        "accuracy": weights @ correct / weights.sum(axis=1),
        "sensitivity": weights @ (called & is_positive) / (weights @ is_positive),
        "specificity": weights @ (~called & ~is_positive) / (weights @ ~is_positive),
    }


def _chunks(groups: Sequence[str], num_resamples: int, seed: int):
  """The weights of `num_resamples` resamples, a chunk at a time (the same for every call
  with the same arguments: paired comparisons rely on it)."""
  weights = resample_weights(groups, num_resamples, seed)
  for start in range(0, num_resamples, _CHUNK):
    yield weights[start:start + _CHUNK]


def _interval(values: np.ndarray, level: float) -> list[float | None]:
  values = values[np.isfinite(values)]
  if not len(values):
    return [None, None]
  tail = 100 * (1 - level) / 2
  return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def unit(groups: Sequence[str]) -> str:
  """What a resample draws: "patient" when some group holds several images, else "image"."""
  return "patient" if len(set(groups)) < len(groups) else "image"


def confidence_intervals(
    is_positive: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray,
    groups: Sequence[str], num_resamples: int = 1000, level: float = 0.95, seed: int = 0,
) -> dict[str, list[float | None]]:
  """Percentile bootstrap interval [low, high] of each figure of FIGURES (sensitivity and
  specificity with `scores` >= `threshold` called positive, a threshold per image where it
  is an array); None where undefined."""
  is_positive, scores = np.asarray(is_positive, bool), np.asarray(scores, np.float64)
  found = {name: [] for name in FIGURES}
  for weights in _chunks(groups, num_resamples, seed):
    for name, values in _figures(is_positive, scores, threshold, weights).items():
      found[name].append(values)
  return {name: _interval(np.concatenate(values), level) for name, values in found.items()}


def paired_difference(
    is_positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
    thresholds: tuple[float, float], groups: Sequence[str], num_resamples: int = 1000,
    level: float = 0.95, seed: int = 0,
) -> dict[str, dict[str, float | None]]:
  """Figures of A minus those of B on the same images, each with its paired bootstrap
  interval (both scored on every resample) and a two-sided bootstrap p-value."""
  is_positive = np.asarray(is_positive, bool)
  scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
  full = np.ones((1, len(is_positive)))
  point_a = _figures(is_positive, scores_a, thresholds[0], full)
  point_b = _figures(is_positive, scores_b, thresholds[1], full)
  found = {name: [] for name in FIGURES}
  for weights in _chunks(groups, num_resamples, seed):
    a = _figures(is_positive, scores_a, thresholds[0], weights)
    b = _figures(is_positive, scores_b, thresholds[1], weights)
    for name in FIGURES:
      found[name].append(a[name] - b[name])
  result = {}
  for name, chunks in found.items():
    differences = np.concatenate(chunks)
    differences = differences[np.isfinite(differences)]
    low, high = _interval(differences, level)
    p_value = (min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0)))
               if len(differences) else None)
    result[name] = {"a": float(point_a[name][0]), "b": float(point_b[name][0]),
                    "difference": float(point_a[name][0] - point_b[name][0]),
                    "low": low, "high": high, "p_value": p_value}
  return result
