"""Record labels of both tasks: a class index (single_label), or a float32 vector with one
entry per finding (multilabel): 1 present, 0 absent, -1 uncertain, NaN missing."""

import numpy as np

Label = int | np.ndarray

UNCERTAIN = -1.0
# config.loss.uncertain -> what a training label of -1 (CheXpert's "uncertain") becomes:
# missing (no loss), absent or present.
UNCERTAINTY_POLICIES = {"ignore": np.nan, "negative": 0.0, "positive": 1.0}


def apply_uncertainty(labels: np.ndarray, policy: str) -> np.ndarray:
  """Finding labels (float32 [..., K]) with each -1 replaced as `policy` says; evaluation
  uses "ignore": an uncertain label counts as missing."""
  labels = np.asarray(labels, np.float32)
  return np.where(labels == UNCERTAIN, np.float32(UNCERTAINTY_POLICIES[policy]), labels)


def present(labels):
  """Where a finding is labelled, 1 or 0 (NaN and -1 are not); numpy or jax arrays."""
  return (labels == 0) | (labels == 1)


def batch_label(label: Label) -> np.ndarray:
  """A record's label as batches hold it: int32 for a class index, float32 [K] for
  findings."""
  return np.int32(label) if np.ndim(label) == 0 else np.asarray(label, np.float32)
