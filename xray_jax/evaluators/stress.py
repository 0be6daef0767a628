"""The shift stress test: a checkpoint's validation metrics under controlled acquisition
shifts (`xray_jax.data.shifts`), each at three severities, and their mean over all."""

import io
import json
import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging

from xray_jax import inference, sharding, trained
from xray_jax import workdir as workdir_lib
from xray_jax.data import shifts
from xray_jax.evaluators import calibration, evaluation, metrics, plots, tta

SCORES = ("roc_auc", "sensitivity", "specificity", "accuracy")


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


def _mean(results: list[dict[str, dict]]) -> dict[str, dict]:
  """Each score's mean over `results` (None where a score is undefined in all)."""
  mean = {}
  for at in results[0]:
    values = {score: [r[at][score] for r in results if r[at][score] is not None]
              for score in SCORES}
    mean[at] = {score: float(np.mean(v)) if v else None for score, v in values.items()}
  return mean


def stress_test(
    workdir: str | pathlib.Path, checkpoint: str | int,
    evaluation_config: ml_collections.ConfigDict, data_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None, seed: int = 0,
) -> dict:
  """Evaluates a checkpoint on the validation split, clean and under every shift at every
  severity; writes WORKDIR/eval/stress_step{N}.json and its figure and returns the report."""
  mesh = mesh or sharding.make_mesh()
  run = trained.load(workdir, checkpoint, mesh)
  data_config = trained.data_config(run.config, data_dir)
  records = evaluation.split_records(run, data_config, "val")
  point = evaluation.operating_point(run, evaluation_config, data_dir, mesh)
  threshold, temperature = point.get("threshold"), point.get("temperature", 1.0)
  views = tta.configured_views(evaluation_config)
  predictor = inference.Predictor(run.model, data_config, run.config.training.eval_batch_size,
                                  mesh, views)
  names = list(run.class_names)
  saved = {}  # Every evaluation's probabilities, for analyses beyond the report's scores.

  def scores(shift: shifts.Shift | None) -> dict[str, dict]:
    probs, labels = predictor(run.variables, records, shift)
    probs = calibration.apply_temperature(probs, temperature)
    saved["labels"] = labels
    saved["clean" if shift is None else f"{shift.name}_{shift.severity}"] = probs
    return _at_thresholds(probs, labels, names, threshold)

  report = {"split": "val", "step": run.step, "workdir": str(run.workdir), "seed": seed,
            "tta": list(views), "temperature": temperature, "threshold": threshold,
            "clean": scores(None), "shifts": {}}
  results = []
  for shift in shifts.all_shifts(seed):
    results.append(scores(shift))
    report["shifts"].setdefault(shift.name, {})[str(shift.severity)] = {
        "level": shift.level, **results[-1]}
    logging.info("stress %s severity %d: %s", shift.name, shift.severity, results[-1])
  report["mean"] = _mean(results)
  logging.info("stress mean over %d shifted evaluations: %s", len(results), report["mean"])
  if jax.process_index() == 0:
    path = report_path(run.workdir, run.step)
    workdir_lib.write_atomically(path, json.dumps(report, indent=1))
    _plot(report, path.with_suffix(".png"))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **saved)
    workdir_lib.write_atomically(path.with_suffix(".npz"), buffer.getvalue())
  return report


def _plot(report: dict, path: pathlib.Path) -> None:
  """Each score against severity (0: clean), one line per shift, at the report's threshold."""
  at = "at_operating_point" if report["threshold"] is not None else "at_0.5"
  curves = {score: {name: [report["clean"][at][score],
                           *(by_severity[str(s)][at][score] for s in shifts.SEVERITIES)]
                    for name, by_severity in report["shifts"].items()}
            for score in ("roc_auc", "sensitivity", "specificity")}
  threshold = "0.5" if report["threshold"] is None else f"{report['threshold']:.3f}"
  plots.plot_shift_curves(curves, path, f"Stress test, step {report['step']}, threshold "
                          f"{threshold}")
