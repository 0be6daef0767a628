"""Cross-fitted decisions: how well a threshold chosen on a set works on new patients of it.

A threshold tuned on the images it is then scored on looks better than it will on the next
patients. Cross-fitting splits the patients into folds; each fold's images are decided with
the threshold chosen on the other folds, so no image helps choose its own threshold.
"""

from collections.abc import Callable, Sequence

import numpy as np

NUM_FOLDS = 5


def patient_folds(groups: Sequence[str], num_folds: int = NUM_FOLDS,
                  seed: int = 0) -> np.ndarray:
  """Fold index [N] of each image: whole patients (groups) dealt into `num_folds` folds in a
  seeded random order, so folds differ in size by at most one patient."""
  names, index = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
  if len(names) < num_folds:
    raise ValueError(f"cross-fitting needs at least {num_folds} patients; got {len(names)}")
  order = np.random.default_rng(seed).permutation(len(names))
  fold_of_group = np.empty(len(names), np.int64)
  fold_of_group[order] = np.arange(len(names)) % num_folds
  return fold_of_group[index]


def crossfit_thresholds(
    groups: Sequence[str], choose: Callable[[np.ndarray], float],
    num_folds: int = NUM_FOLDS, seed: int = 0,
) -> tuple[np.ndarray, list[float]]:
  """Per-image thresholds [N], each chosen by `choose(indices)` on the images of the other
  folds, and the threshold of each fold."""
  folds = patient_folds(groups, num_folds, seed)
  chosen = [float(choose(np.flatnonzero(folds != fold))) for fold in range(num_folds)]
  return np.asarray(chosen)[folds], chosen
