"""The shift stress test: a checkpoint's validation metrics under controlled acquisition
shifts (`xray_jax.data.shifts`), each at three severities, and their mean over all; per
finding and their macro mean for a multilabel run."""

import io
import json
import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging

from xray_jax import inference, sharding, tasks, trained
from xray_jax import workdir as workdir_lib
from xray_jax.data import shifts
from xray_jax.evaluators import calibration, evaluation, metrics, multilabel, plots, tta

SCORES = ("roc_auc", "sensitivity", "specificity", "accuracy")
FINDING_SCORES = ("roc_auc", "sensitivity", "specificity")  # Per finding, and their macro mean.


def report_path(workdir: pathlib.Path, step: int) -> pathlib.Path:
  return workdir / workdir_lib.EVAL / f"stress_step{step}.json"


def _scores(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
            threshold: float | None) -> dict[str, float | None]:
  """ROC AUC, sensitivity, specificity and accuracy (of the positive class, or the macro
  averages beyond two classes) at `threshold` (None: 0.5, or the argmax)."""
  report = metrics.classification_report(probs, labels, class_names, threshold)
  block = report.get("positive_class") or report["macro"]
  return {"roc_auc": block["roc_auc"], "sensitivity": block["recall"],
          "specificity": block["specificity"], "accuracy": report["accuracy"]}


def _at_thresholds(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                   threshold: float | None) -> dict[str, dict]:
  """Scores at 0.5 and, when there is one, at the saved operating threshold."""
  result = {"at_0.5": _scores(probs, labels, class_names, None)}
  if threshold is not None:
    result["at_operating_point"] = _scores(probs, labels, class_names, threshold)
  return result


def _finding_scores(probs: np.ndarray, labels: np.ndarray, finding_names: list[str],
                    thresholds: np.ndarray | None) -> dict[str, dict]:
  """Per finding and their macro mean (over the findings with both classes): ROC AUC, and
  sensitivity and specificity at each finding's threshold (None: 0.5)."""
  report = multilabel.finding_report(probs, labels, finding_names, thresholds)
  scores = lambda block: {score: block[score] for score in FINDING_SCORES}
  return {"macro": scores(report["macro"]),
          "per_finding": {name: scores(found) for name, found in report["per_finding"].items()}}


def _mean(results: list[dict]) -> dict:
  """Each score's mean over `results`, nested alike (None where it is undefined in all)."""
  mean = {}
  for key, first in results[0].items():
    if isinstance(first, dict):
      mean[key] = _mean([r[key] for r in results])
    else:
      values = [r[key] for r in results if r[key] is not None]
      mean[key] = float(np.mean(values)) if values else None
  return mean


def stress_test(
    workdir: str | pathlib.Path, checkpoint: str | int,
    evaluation_config: ml_collections.ConfigDict, data_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None, seed: int = 0,
) -> dict:
  """Evaluates a checkpoint on the validation split, clean and under every shift at every
  severity; writes WORKDIR/eval/stress_step{N}.json and its figure and returns the report.

  Single-label: at 0.5 and at the operating point (chosen first if none is saved).
  Multilabel: per finding, at the thresholds saved for its step, else 0.5 (an uncertain
  label counts as missing).
  """
  mesh = mesh or sharding.make_mesh()
  run = trained.load(workdir, checkpoint, mesh)
  task = tasks.get(run.config)
  data_config = trained.data_config(run.config, data_dir)
  records = evaluation.split_records(run, data_config, "val")  # Uncertain findings: missing.
  names = list(run.class_names)
  if task.label_is_vector:
    thresholds = trained.load_thresholds(run)
    temperature = trained.load_temperature(run)
    decision = {"thresholds": None if thresholds is None else thresholds.tolist()}
    score = lambda probs, labels: _finding_scores(probs, labels, names, thresholds)
  else:
    point = evaluation.operating_point(run, evaluation_config, data_dir, mesh)
    threshold, temperature = point.get("threshold"), point.get("temperature", 1.0)
    decision = {"threshold": threshold}
    score = lambda probs, labels: _at_thresholds(probs, labels, names, threshold)
  views = tta.configured_views(evaluation_config)
  predictor = inference.Predictor(run.model, data_config, run.config.training.eval_batch_size,
                                  mesh, views, task)
  saved = {}  # Every evaluation's probabilities, for analyses beyond the report's scores.

  def scores(shift: shifts.Shift | None) -> dict[str, dict]:
    probs, labels = predictor(run.variables, records, shift)
    probs = calibration.apply_temperature(probs, temperature)
    saved["labels"] = labels
    saved["clean" if shift is None else f"{shift.name}_{shift.severity}"] = probs
    return score(probs, labels)

  report = {"split": "val", "step": run.step, "workdir": str(run.workdir), "seed": seed,
            "tta": list(views), "temperature": temperature, **decision,
            "clean": scores(None), "shifts": {}}
  results = []
  for shift in shifts.all_shifts(seed):
    results.append(scores(shift))
    report["shifts"].setdefault(shift.name, {})[str(shift.severity)] = {
        "level": shift.level, **results[-1]}
    logging.info("stress %s severity %d: %s", shift.name, shift.severity, results[-1])
  report["mean"] = _mean(results)
  logging.info("stress mean over %d shifted evaluations: %s", len(results), report["mean"])
  if task.label_is_vector:
    logging.info("stress ROC AUC per finding, step %d:\n%s", run.step, finding_table(report))
  if jax.process_index() == 0:
    path = report_path(run.workdir, run.step)
    workdir_lib.write_atomically(path, json.dumps(report, indent=1))
    _plot(report, path.with_suffix(".png"))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **saved)
    workdir_lib.write_atomically(path.with_suffix(".npz"), buffer.getvalue())
  return report


def _plot(report: dict, path: pathlib.Path) -> None:
  """Each score against severity (0: clean), one line per shift, at the report's threshold;
  for a multilabel run, the macro and each finding's ROC AUC."""
  if "thresholds" in report:
    _plot_findings(report, path)
    return
  at = "at_operating_point" if report["threshold"] is not None else "at_0.5"
  curves = {score: {name: [report["clean"][at][score],
                           *(by_severity[str(s)][at][score] for s in shifts.SEVERITIES)]
                    for name, by_severity in report["shifts"].items()}
            for score in ("roc_auc", "sensitivity", "specificity")}
  threshold = "0.5" if report["threshold"] is None else f"{report['threshold']:.3f}"
  plots.plot_shift_curves(curves, path, f"Stress test, step {report['step']}, threshold "
                          f"{threshold}")


def _plot_findings(report: dict, path: pathlib.Path) -> None:
  """The macro and each finding's ROC AUC against severity (0: clean), one line per shift."""
  panels = {"macro ROC AUC": lambda result: result["macro"]["roc_auc"]}
  panels.update({f"ROC AUC {name}": lambda result, name=name:
                 result["per_finding"][name]["roc_auc"] for name in report["clean"]["per_finding"]})
  curves = {title: {name: [value(report["clean"]),
                           *(value(by_severity[str(s)]) for s in shifts.SEVERITIES)]
                    for name, by_severity in report["shifts"].items()}
            for title, value in panels.items()}
  plots.plot_shift_curves(curves, path, f"Stress test, step {report['step']}, ROC AUC per "
                          "finding")


def finding_table(report: dict) -> str:
  """A multilabel stress report as a fixed-width table: the macro and each finding's ROC AUC,
  clean, under each shift at each severity, and their mean over the shifted evaluations."""
  names = list(report["clean"]["per_finding"])
  rows = [("clean", "", report["clean"])]
  rows += [(shift, severity, result) for shift, by_severity in report["shifts"].items()
           for severity, result in by_severity.items()]
  rows.append(("mean", "", report["mean"]))
  columns = ["macro", *names]
  widths = [max(len(c), 6) for c in columns]
  cell = lambda value, width: f"{'-' if value is None else f'{value:.3f}':>{width}}"
  lines = [f"{'shift':<12} {'sev':>3}  " + "  ".join(
      f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
  for shift, severity, result in rows:
    values = [result["macro"]["roc_auc"], *(result["per_finding"][n]["roc_auc"] for n in names)]
    lines.append(f"{shift:<12} {severity:>3}  " + "  ".join(
        cell(v, w) for v, w in zip(values, widths, strict=True)))
  return "\n".join(lines)
