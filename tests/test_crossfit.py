"""Cross-fitting: patients stay in one fold, and no image helps choose its own threshold."""

import numpy as np
import pytest

from xray_jax.evaluators import bootstrap, crossfit, metrics


def test_patient_folds_keep_patients_together_and_balance_the_folds():
  groups = [f"p{i // 3}" for i in range(3 * 23)] + [f"q{i}" for i in range(4)]  # 27 patients.
  folds = crossfit.patient_folds(groups, num_folds=5, seed=3)
  for name in set(groups):
    assert len({folds[i] for i, g in enumerate(groups) if g == name}) == 1
  patients_per_fold = [len(set(np.asarray(groups)[folds == k])) for k in range(5)]
  assert sorted(patients_per_fold) == [5, 5, 5, 6, 6]
  np.testing.assert_array_equal(folds, crossfit.patient_folds(groups, num_folds=5, seed=3))
  assert not np.array_equal(folds, crossfit.patient_folds(groups, num_folds=5, seed=4))
  with pytest.raises(ValueError, match="at least 5 patients; got 4"):
    crossfit.patient_folds(["a", "b", "c", "d"])


def test_each_fold_is_decided_by_a_threshold_chosen_without_it():
  groups = [f"p{i // 2}" for i in range(40)]
  seen = []

  def choose(index):
    seen.append(set(index.tolist()))
    return float(len(index))  # A threshold that tells which images chose it.

  per_image, chosen = crossfit.crossfit_thresholds(groups, choose)
  folds = crossfit.patient_folds(groups)
  assert len(chosen) == len(seen) == crossfit.NUM_FOLDS
  for fold, index in enumerate(seen):
    assert index == set(np.flatnonzero(folds != fold).tolist())
    np.testing.assert_array_equal(per_image[folds == fold], chosen[fold])


def test_reports_and_intervals_take_a_threshold_per_image():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 60)
  p1 = np.clip(0.35 * labels + rng.uniform(0, 0.65, 60), 0, 1)
  probs = np.stack([1 - p1, p1], axis=1)
  thresholds = rng.uniform(0.3, 0.7, 60)
  report = metrics.classification_report(probs, labels, ["neg", "pos"], threshold=thresholds)
  called = p1 >= thresholds
  assert report["accuracy"] == pytest.approx(np.mean(called == (labels == 1)))
  assert report["positive_class"]["specificity"] == pytest.approx(np.mean(~called[labels == 0]))
  assert report["positive_class"]["threshold"] is None
  intervals = bootstrap.confidence_intervals(labels == 1, p1, thresholds, [str(i) for i in
                                             range(60)], num_resamples=200)
  low, high = intervals["accuracy"]
  assert low < report["accuracy"] < high
