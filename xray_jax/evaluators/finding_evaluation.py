"""The evaluation job's multi-label parts: each finding's operating threshold, the report
with its bootstrap intervals, the predictions table and the ROC figure (for the reports of
evaluation.py and cross_dataset.py)."""

import csv
import io
import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from xray_jax import workdir as workdir_lib
from xray_jax.data.records import Record
from xray_jax.evaluators import multilabel


def choose_operating_point(probs: np.ndarray, labels: np.ndarray, finding_names: Sequence[str],
                           settings: dict) -> dict:
  """Each finding's threshold by `settings["method"]` (fixed: `fixed_threshold` for all;
  youden or sensitivity: chosen on its known labels, multilabel.choose_thresholds)."""
  chosen = {"finding_names": list(finding_names)}
  if settings["method"] == "fixed":
    return {**chosen, "thresholds": [settings["fixed_threshold"]] * len(finding_names)}
  found = multilabel.choose_thresholds(probs, labels, settings["method"],
                                       settings.get("target_sensitivity", 0.95))
  return {**chosen, "thresholds": found["thresholds"], "kept_default": found["kept_default"]}


def finding_report(probs: np.ndarray, labels: np.ndarray, finding_names: Sequence[str],
                   thresholds: Sequence[float], groups: Sequence[str],
                   evaluation_config: ml_collections.ConfigDict) -> dict:
  """multilabel.finding_report at `thresholds`, with its "intervals" (resampling `groups`,
  the patients) unless evaluation.bootstrap_resamples is 0."""
  report = multilabel.finding_report(probs, labels, finding_names, thresholds)
  resamples = evaluation_config.get("bootstrap_resamples", 1000)
  if resamples:
    report["intervals"] = multilabel.finding_intervals(
        probs, labels, finding_names, groups, thresholds, resamples,
        evaluation_config.get("confidence_level", 0.95))
  return report


def _label_text(label: float) -> str:
  return "" if np.isnan(label) else f"{label:g}"


def write_outputs(prefix: pathlib.Path, records: Sequence[Record], probs: np.ndarray,
                  labels: np.ndarray, report: dict) -> None:
  """PREFIX_predictions.csv (path, prob_FINDING..., label_FINDING...: 1, 0 or empty for
  missing) and PREFIX_roc.png (a ROC panel per finding of `report`)."""
  names = report["finding_names"]
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(["path", *(f"prob_{name}" for name in names),
                   *(f"label_{name}" for name in names)])
  for record, row, label in zip(records, probs, labels, strict=True):
    writer.writerow([record["path"], *(f"{p:.6f}" for p in row), *map(_label_text, label)])
  workdir_lib.write_atomically(prefix.with_name(f"{prefix.name}_predictions.csv"),
                               buffer.getvalue())
  multilabel.plot_roc_per_finding(probs, labels, report, f"{prefix}_roc.png",
                                  f"ROC per finding: {prefix.name.replace('_', ' ')}")
