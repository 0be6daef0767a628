"""Validation metrics of the multilabel task: probabilities [N, K] of K findings against
labels [N, K] that are 1, 0, or missing (NaN, or -1: uncertain)."""

import re
from collections.abc import Sequence

import numpy as np

from xray_jax import labels as labels_lib
from xray_jax.evaluators import metrics


def finding_aucs(probs: np.ndarray, labels: np.ndarray) -> list[float]:
  """Each finding's ROC AUC over its present labels; NaN where one class is absent."""
  present = labels_lib.present(labels)
  return [metrics.roc_auc(labels[present[:, k], k] == 1, probs[present[:, k], k])
          for k in range(labels.shape[1])]


def summarize(probs: np.ndarray, labels: np.ndarray,
              finding_names: Sequence[str] = ()) -> dict[str, float]:
  """Over the present labels: `auc` (the macro mean of the findings' ROC AUCs, those with
  both classes present), `auc_micro` (all entries pooled), `accuracy` at 0.5, `nll` (mean
  binary cross-entropy), `num_examples`, and given `finding_names` (one per column), each
  finding's AUC as `auc_NAME`."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
  if probs.ndim != 2 or probs.shape != labels.shape:
    raise ValueError(f"Expected probs and labels [N, K]; got {probs.shape} and {labels.shape}.")
  aucs = finding_aucs(probs, labels)
  defined = [auc for auc in aucs if not np.isnan(auc)]
  present = labels_lib.present(labels)
  scores, truth = probs[present], labels[present] == 1
  clipped = np.clip(scores, 1e-12, 1 - 1e-12)
  log_likelihood = np.where(truth, np.log(clipped), np.log1p(-clipped))
  named = {f"auc_{_key(name)}": auc
           for name, auc in zip(finding_names, aucs, strict=True)} if finding_names else {}
  return {
      "accuracy": float(np.mean((scores >= 0.5) == truth)) if truth.size else float("nan"),
      "nll": float(-np.mean(log_likelihood)) if truth.size else float("nan"),
      "auc": float(np.mean(defined)) if defined else float("nan"),
      "auc_micro": metrics.roc_auc(truth, scores),
      "num_examples": len(labels),
      **named,
  }


def _key(name: str) -> str:
  """A finding's name as a metric name: runs of other characters than letters, digits and _
  become one _ ("Pleural Effusion" -> "Pleural_Effusion")."""
  return re.sub(r"\W+", "_", name)
