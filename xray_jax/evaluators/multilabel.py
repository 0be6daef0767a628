"""Per-finding figures of a multi-label classifier: probabilities [N, K] (a sigmoid per
finding) against labels [N, K] of 1.0, 0.0 or NaN.

NaN marks a missing (or, at evaluation, uncertain) label: that image is left out of that
finding's figures only. Macro figures average the findings with both classes present;
micro figures pool every present (image, finding) pair.
"""

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import logging

from xray_jax.evaluators import bootstrap, metrics, plots

DEFAULT_THRESHOLD = 0.5
INTERVAL_FIGURES = ("roc_auc", "sensitivity", "specificity")
_MACRO_FIGURES = ("roc_auc", "pr_auc", "sensitivity", "specificity")
_LABELS = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "sensitivity": "sensitivity",
           "specificity": "specificity"}
_RESAMPLES_AT_ONCE = 200  # Memory: this many x images weights per finding.


def _check(probs: np.ndarray, labels: np.ndarray,
           finding_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """probs and labels as float64 [N, K], refused unless finite probs and 1/0/NaN labels."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
  if probs.ndim != 2 or labels.shape != probs.shape:
    raise ValueError(f"Expected probs and labels of one shape [N, K]; got {probs.shape} and "
                     f"{labels.shape}.")
  if finding_names is not None and len(finding_names) != probs.shape[1]:
    raise ValueError(f"{len(finding_names)} finding names for {probs.shape[1]} columns.")
  if not np.isfinite(probs).all():
    raise ValueError("probs hold NaN or infinite values.")
  known = labels[~np.isnan(labels)]
  odd = np.setdiff1d(known, (0.0, 1.0))
  if odd.size:
    raise ValueError(f"labels must be 1.0, 0.0 or NaN (missing or uncertain); found {odd[:5]}.")
  return probs, labels


def _column(probs: np.ndarray, labels: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(indices, is_positive, scores) of finding k over the images whose label of it is known."""
  present = np.flatnonzero(~np.isnan(labels[:, k]))
  return present, labels[present, k] == 1.0, probs[present, k]


def _both_classes(is_positive: np.ndarray) -> bool:
  return bool(is_positive.any() and not is_positive.all())


def _per_finding(thresholds: float | Sequence[float] | None, num_findings: int) -> np.ndarray:
  """Thresholds [K]: DEFAULT_THRESHOLD for None, one value for all, or one per finding."""
  values = np.asarray(DEFAULT_THRESHOLD if thresholds is None else thresholds, np.float64)
  if values.ndim == 0:
    return np.full(num_findings, float(values))
  if values.shape != (num_findings,):
    raise ValueError(f"{values.size} thresholds for {num_findings} findings.")
  return values


def _finding(is_positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
  """A finding's counts, AUCs and, at `threshold`, its binary report's decision figures;
  sensitivity (specificity) is NaN without positives (negatives)."""
  binary = metrics.classification_report(
      np.stack([1 - scores, scores], axis=1), is_positive.astype(np.int64),
      ["absent", "present"], threshold=threshold)["positive_class"]
  positives = int(is_positive.sum())
  negatives = len(is_positive) - positives
  return {
      "roc_auc": metrics.roc_auc(is_positive, scores),
      # Undefined without positives: NaN (None in the report) rather than sklearn's 0.
      "pr_auc": metrics.average_precision(is_positive, scores) if positives else np.nan,
      "prevalence": positives / len(is_positive) if len(is_positive) else np.nan,
      "positives": positives,
      "negatives": negatives,
      "threshold": float(threshold),
      "sensitivity": binary["recall"] if positives else np.nan,
      "specificity": binary["specificity"] if negatives else np.nan,
      "precision": binary["precision"],
      "f1": binary["f1"],
  }


def finding_report(probs: np.ndarray, labels: np.ndarray, finding_names: Sequence[str],
                   thresholds: float | Sequence[float] | None = None) -> dict:
  """JSON-safe figures of probs [N, K] against labels [N, K] (NaN: missing): per finding, its
  AUCs, prevalence and counts, and its decision figures at its threshold (default 0.5);
  macro and micro ROC and PR AUC; how many labels were used and missing."""
  probs, labels = _check(probs, labels, finding_names)
  thresholds = _per_finding(thresholds, probs.shape[1])
  per_finding = {name: _finding(*_column(probs, labels, k)[1:], thresholds[k])
                 for k, name in enumerate(finding_names)}
  both = [found for found in per_finding.values() if found["positives"] and found["negatives"]]
  known = ~np.isnan(labels)
  pooled_positive, pooled_scores = labels[known] == 1.0, probs[known]
  return metrics.json_safe({
      "num_images": len(probs),
      "finding_names": list(finding_names),
      "labels_used": int(known.sum()),
      "labels_missing": int((~known).sum()),
      "per_finding": per_finding,
      "macro": {"findings": len(both), **{
          figure: float(np.mean([found[figure] for found in both])) if both else np.nan
          for figure in _MACRO_FIGURES}},
      "micro": {"roc_auc": metrics.roc_auc(pooled_positive, pooled_scores),
                "pr_auc": (metrics.average_precision(pooled_positive, pooled_scores)
                           if pooled_positive.any() else np.nan)},
  })


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, method: str,
                      target_sensitivity: float = 0.95) -> dict:
  """Per-finding thresholds by metrics.choose_threshold's `method` over each finding's known
  labels (on validation): {"method", "thresholds", "kept_default"}, where a finding without
  both classes keeps DEFAULT_THRESHOLD and its kept_default is True."""
  if method not in metrics.CHOSEN_METHODS:
    raise ValueError(f"Per-finding threshold method {method!r}: expected one of "
                     f"{', '.join(metrics.CHOSEN_METHODS)} (pass fixed thresholds to "
                     "finding_report).")
  probs, labels = _check(probs, labels)
  thresholds, kept_default = [], []
  for k in range(probs.shape[1]):
    _, is_positive, scores = _column(probs, labels, k)
    both = _both_classes(is_positive)
    thresholds.append(metrics.choose_threshold(is_positive, scores, method, target_sensitivity)
                      if both else DEFAULT_THRESHOLD)
    kept_default.append(not both)
  return {"method": method, "thresholds": thresholds, "kept_default": kept_default}


def finding_intervals(
    probs: np.ndarray, labels: np.ndarray, finding_names: Sequence[str], groups: Sequence[str],
    thresholds: float | Sequence[float] | None = None, num_resamples: int = 1000,
    level: float = 0.95, seed: int = 0,
) -> dict:
  """Percentile bootstrap intervals [low, high] of each finding's INTERVAL_FIGURES (at its
  threshold) and of their macro means, resampling patients (`groups`, one per image).

  Each resample draws one set of patients for every finding, as bootstrap.py draws them
  (the same draws for the same seed). The macro figure of a resample is the mean over the
  findings with both classes in the data; a resample where one of them is undefined (drew
  no positive or no negative of it) is left out of the macro interval.
  """
  probs, labels = _check(probs, labels, finding_names)
  if len(groups) != len(probs):
    raise ValueError(f"{len(groups)} groups for {len(probs)} images.")
  thresholds = _per_finding(thresholds, probs.shape[1])
  columns = [_column(probs, labels, k) for k in range(probs.shape[1])]
  found = np.full((len(INTERVAL_FIGURES), num_resamples, probs.shape[1]), np.nan)
  for resamples, k, weights in _resampled(columns, groups, num_resamples, seed):
    _, is_positive, scores = columns[k]
    figures = bootstrap.resampled_figures(is_positive, scores, thresholds[k], weights)
    for f, figure in enumerate(INTERVAL_FIGURES):
      found[f, resamples, k] = figures[figure]
  macro = _mean_over(found, _findings_with_both_classes(columns))
  return {
      "level": level, "resamples": num_resamples, "unit": bootstrap.unit(groups),
      "groups": len(set(groups)),
      "per_finding": {name: {figure: bootstrap.percentile_interval(found[f, :, k], level)
                             for f, figure in enumerate(INTERVAL_FIGURES)}
                      for k, name in enumerate(finding_names)},
      "macro": {figure: bootstrap.percentile_interval(macro[f], level)
                for f, figure in enumerate(INTERVAL_FIGURES)},
  }


def _resampled(columns: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
               groups: Sequence[str], num_resamples: int, seed: int):
  """Yields (a slice of the resamples, finding k, their weights [resamples, k's known
  images]) for every finding with a known label: one draw of patients weighs all findings
  (bootstrap.py's draws, the same for the same seed)."""
  names, group_of_image = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
  # Drawn per patient: an image's weight is its patient's count, gathered per finding.
  draws = bootstrap.resample_weights(names, num_resamples, seed)
  for start in range(0, num_resamples, _RESAMPLES_AT_ONCE):
    chunk = draws[start:start + _RESAMPLES_AT_ONCE]
    for k, (present, _, _) in enumerate(columns):
      if len(present):
        yield slice(start, start + len(chunk)), k, np.take(chunk, group_of_image[present], axis=1)


def _findings_with_both_classes(
    columns: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[int]:
  return [k for k, (_, is_positive, _) in enumerate(columns) if _both_classes(is_positive)]


def paired_auc_difference(
    labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
    finding_names: Sequence[str], groups: Sequence[str], num_resamples: int = 1000,
    level: float = 0.95, seed: int = 0,
) -> dict[str, dict]:
  """ROC AUC of A minus B on the same images and labels, per finding ("roc_auc_NAME") and
  macro ("roc_auc_macro", over the findings with both classes), each with its paired
  bootstrap interval and p-value (bootstrap.difference_summary): every resample draws one
  set of patients that scores both models on every finding."""
  probs_a, labels = _check(probs_a, labels, finding_names)
  probs_b, _ = _check(probs_b, labels, finding_names)
  columns = {side: [_column(probs, labels, k) for k in range(labels.shape[1])]
             for side, probs in (("a", probs_a), ("b", probs_b))}
  aucs = {side: np.array([metrics.roc_auc(is_positive, scores)
                          for _, is_positive, scores in side_columns])
          for side, side_columns in columns.items()}
  resampled = {side: np.full((num_resamples, labels.shape[1]), np.nan) for side in columns}
  for resamples, k, weights in _resampled(columns["a"], groups, num_resamples, seed):
    for side, side_columns in columns.items():
      _, is_positive, scores = side_columns[k]
      resampled[side][resamples, k] = bootstrap.weighted_roc_auc(is_positive, scores, weights)
  result = {f"roc_auc_{name}": bootstrap.difference_summary(
      aucs["a"][k], aucs["b"][k], resampled["a"][:, k] - resampled["b"][:, k], level)
      for k, name in enumerate(finding_names)}
  both = _findings_with_both_classes(columns["a"])
  macro = {side: (_mean_over(aucs[side], both), _mean_over(resampled[side], both))
           for side in columns}
  result["roc_auc_macro"] = bootstrap.difference_summary(
      macro["a"][0], macro["b"][0], macro["a"][1] - macro["b"][1], level)
  return result


def _mean_over(values: np.ndarray, findings: Sequence[int]) -> np.ndarray:
  """The mean of `values` [..., K] over `findings` (the last axis); NaN for none."""
  if not findings:
    return np.full(values.shape[:-1], np.nan)
  return values[..., findings].mean(axis=-1)


def plot_roc_per_finding(probs: np.ndarray, labels: np.ndarray, report: dict,
                         path: str | os.PathLike, title: str = "ROC per finding") -> pathlib.Path:
  """One ROC panel per finding of `report` (finding_report's, with finding_intervals' under
  "intervals" where computed) with a known label: AUC, interval and operating point."""
  probs, labels = _check(probs, labels, report["finding_names"])
  intervals = report.get("intervals")
  curves, captions, points = {}, {}, {}
  for k, name in enumerate(report["finding_names"]):
    found = report["per_finding"][name]
    if not found["positives"] + found["negatives"]:
      continue
    curves[name] = _column(probs, labels, k)[1:]
    interval = intervals["per_finding"][name]["roc_auc"] if intervals else [None]
    if None not in interval:
      captions[name] = f"{100 * intervals['level']:g}% CI {interval[0]:.3f}-{interval[1]:.3f}"
    if found["sensitivity"] is not None and found["specificity"] is not None:
      points[name] = (1 - found["specificity"], found["sensitivity"])
  return plots.plot_roc_panels(curves, path, title, captions, points)


def _figures(values: dict, intervals: dict, figures: Sequence[str]) -> str:
  """`ROC AUC 0.8123 (0.8010-0.8230), ...`: each of `figures` with its interval if known."""
  return ", ".join(bootstrap.format_figure(_LABELS[figure], values[figure], intervals.get(figure))
                   for figure in figures)


def summary_lines(report: dict) -> list[str]:
  """One line per finding (ROC AUC, sensitivity and specificity at its threshold, with the
  intervals of report["intervals"] where present), a macro and a micro line, and with
  intervals one saying how they were drawn."""
  intervals = report.get("intervals") or {"per_finding": {}, "macro": {}}
  lines = [f"{name}: {_figures(found, intervals['per_finding'].get(name, {}), INTERVAL_FIGURES)}"
           f" at threshold {found['threshold']:.3f}, {found['positives']} positive, "
           f"{found['negatives']} negative" for name, found in report["per_finding"].items()]
  macro = report["macro"]
  lines.append(f"macro over {macro['findings']} findings with both classes: "
               f"{_figures(macro, intervals['macro'], _MACRO_FIGURES)}")
  lines.append(f"micro over {report['labels_used']} labels ({report['labels_missing']} "
               f"missing): {_figures(report['micro'], {}, ('roc_auc', 'pr_auc'))}")
  if "intervals" in report:
    lines.append(f"intervals: {100 * intervals['level']:g}% percentile bootstrap, "
                 f"{intervals['resamples']} resamples of its {intervals['groups']} "
                 f"{intervals['unit']}s")
  return lines


def log_summary(prefix: str, report: dict) -> None:
  """Logs summary_lines(report), each after `prefix` (e.g. "test step 1000")."""
  for line in summary_lines(report):
    logging.info("%s %s", prefix, line)
