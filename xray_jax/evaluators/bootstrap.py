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


def _weighted_wins(winners: np.ndarray, losers: np.ndarray, scores: np.ndarray,
                   weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per row of `weights` [B, N]: the weight of (winner, loser) pairs (indices into scores)
  where the winner scores higher, ties counting half; and that of all pairs."""
  losers = losers[np.argsort(scores[losers], kind="mergesort")]
  # Per winner, how many losers score below it, and below or level with it.
  below = np.searchsorted(scores[losers], scores[winners], side="left")
  level_or_below = np.searchsorted(scores[losers], scores[winners], side="right")
  loser_weight_below = np.zeros((len(weights), len(losers) + 1))
  np.cumsum(weights[:, losers], axis=1, out=loser_weight_below[:, 1:])
  winner_weights = weights[:, winners]
  wins = np.einsum("bi,bi->b", winner_weights, loser_weight_below[:, below])
  if np.any(level_or_below != below):
    wins += np.einsum("bi,bi->b", winner_weights, loser_weight_below[:, level_or_below])
    wins /= 2
  return wins, winner_weights.sum(axis=1) * loser_weight_below[:, -1]


def weighted_roc_auc(is_positive: np.ndarray, scores: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
  """ROC AUC (ties count half) of each row of `weights` [B, N] over the same images: NaN
  where a row weighs no positive or no negative."""
  is_positive, scores = np.asarray(is_positive, bool), np.asarray(scores)
  positives, negatives = np.flatnonzero(is_positive), np.flatnonzero(~is_positive)
  # The cumulative sum over the losers costs most per image: run it over the smaller class.
  if len(positives) < len(negatives):
    losses, total = _weighted_wins(negatives, positives, scores, weights)
    wins = total - losses
  else:
    wins, total = _weighted_wins(positives, negatives, scores, weights)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, wins / np.where(total > 0, total, 1), np.nan)


def resampled_figures(is_positive: np.ndarray, scores: np.ndarray,
                      threshold: float | np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
  """Each figure of FIGURES under each row of `weights` [B, N]."""
  called = scores >= threshold
  # Every weighted count in one pass over the weights.
  correct, true_pos, pos, true_neg, neg = (weights @ np.stack(
      [called == is_positive, called & is_positive, is_positive, ~called & ~is_positive,
       ~is_positive], axis=1).astype(np.float64)).T
  with np.errstate(invalid="ignore", divide="ignore"):
    return {
        "roc_auc": weighted_roc_auc(is_positive, scores, weights),
        "accuracy": correct / (pos + neg),
        "sensitivity": true_pos / pos,
        "specificity": true_neg / neg,
    }


def _chunks(groups: Sequence[str], num_resamples: int, seed: int):
  """The weights of `num_resamples` resamples, a chunk at a time (the same for every call
  with the same arguments: paired comparisons rely on it)."""
  weights = resample_weights(groups, num_resamples, seed)
  for start in range(0, num_resamples, _CHUNK):
    yield weights[start:start + _CHUNK]


def percentile_interval(values: np.ndarray, level: float) -> list[float | None]:
  """[low, high] holding the central `level` of the finite values; [None, None] if none."""
  values = values[np.isfinite(values)]
  if not len(values):
    return [None, None]
  tail = 100 * (1 - level) / 2
  return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def format_figure(name: str, value: float | None, interval: list[float | None] | None) -> str:
  """`name 0.8284`, with ` (0.7800-0.8700)` where an interval is known; `name n/a` for None."""
  if value is None:
    return f"{name} n/a"
  if interval is None or None in interval:
    return f"{name} {value:.4f}"
  return f"{name} {value:.4f} ({interval[0]:.4f}-{interval[1]:.4f})"


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
    for name, values in resampled_figures(is_positive, scores, threshold, weights).items():
      found[name].append(values)
  return {name: percentile_interval(np.concatenate(values), level)
          for name, values in found.items()}


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
  point_a = resampled_figures(is_positive, scores_a, thresholds[0], full)
  point_b = resampled_figures(is_positive, scores_b, thresholds[1], full)
  found = {name: [] for name in FIGURES}
  for weights in _chunks(groups, num_resamples, seed):
    a = resampled_figures(is_positive, scores_a, thresholds[0], weights)
    b = resampled_figures(is_positive, scores_b, thresholds[1], weights)
    for name in FIGURES:
      found[name].append(a[name] - b[name])
  return {name: difference_summary(point_a[name][0], point_b[name][0], np.concatenate(chunks),
                                   level)
          for name, chunks in found.items()}


def difference_summary(a: float, b: float, differences: np.ndarray,
                       level: float) -> dict[str, float | None]:
  """A figure of A and of B, A - B, and from its resampled `differences` (non-finite ones
  left out) a percentile interval and a two-sided bootstrap p-value."""
  differences = differences[np.isfinite(differences)]
  low, high = percentile_interval(differences, level)
  p_value = (min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0)))
             if len(differences) else None)
  return {"a": float(a), "b": float(b), "difference": float(a - b), "low": low, "high": high,
          "p_value": p_value}
