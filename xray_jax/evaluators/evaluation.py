"""The checkpoint-evaluation job: reports, predictions, figures and the operating point of a
checkpoint on a split, and watching a training run (`xray_jax.evaluate` is its binary)."""

import csv
import dataclasses
import io
import json
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from xray_jax import checkpointing, config_checks, errors, inference, sharding, trained
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets, eval_sets, shifts, splits
from xray_jax.data.records import Record
from xray_jax.evaluators import (
  bootstrap,
  calibration,
  crossfit,
  finding_evaluation,
  metrics,
  multilabel,
  plots,
  tta,
)


def report_path(workdir: pathlib.Path, split: str, step: int) -> pathlib.Path:
  return workdir / workdir_lib.EVAL / f"{split}_step{step}.json"


def split_records(run: trained.TrainedRun, data_config, split: str) -> list[Record]:
  """The records of a run's `split`: "val", "test" or a named set of `data.eval_sets`,
  checked against its class names; uncertain findings count as missing."""
  class_names, records = load_split(data_config, run.workdir, split)
  if class_names != run.class_names:
    raise errors.DataError(
        f"{data_config.dir}: classes {class_names} differ from the run's {run.class_names}")
  return run.task.relabelled(records, "ignore")


def load_split(data_config: ml_collections.ConfigDict, workdir: pathlib.Path,
               split: str) -> tuple[tuple[str, ...], list[Record]]:
  """The class names of a data source and the records of its `split` (validation carved
  from train as recorded in `workdir`, or anew where it holds no split)."""
  found = datasets.load_splits(data_config, workdir)
  named = eval_sets.parse(data_config.get("eval_sets", ""))
  if split in named:
    return found.class_names, eval_sets.set_records(split, named[split], found)
  if split not in ("val", "test"):
    raise errors.ConfigError(f"--split={split}: expected val, test or a set of "
                             f"config.data.eval_sets ({', '.join(named) or 'none'})")
  records = {"val": found.val, "test": found.test}[split]
  if not records:
    raise errors.DataError(
        f"data source {data_config.source!r} ({data_config.dir}) has no {split} split")
  return found.class_names, records


def _write_predictions(path: pathlib.Path, records, probs, labels, class_names) -> None:
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(["path", "label", *(f"prob_{name}" for name in class_names)])
  for record, label, row in zip(records, labels, probs, strict=True):
    writer.writerow([record["path"], class_names[label], *(f"{p:.6f}" for p in row)])
  workdir_lib.write_atomically(path, buffer.getvalue())


def _write_figures(prefix: pathlib.Path, probs, labels, class_names, report, bins) -> None:
  title = f"{prefix.name.replace('_', ' ')}"
  positives = [1] if len(class_names) == 2 else range(len(class_names))
  suffix = lambda c: "" if len(class_names) == 2 else f"_{class_names[c]}"
  key = "at_operating_point" if "at_operating_point" in report else "at_0.5"
  intervals = report.get("intervals", {}).get(key, {})
  level = f"{100 * report['intervals']['level']:g}% CI" if intervals else ""
  caption = lambda name: (f"{level} {intervals[name][0]:.3f}-{intervals[name][1]:.3f}"
                          if intervals and None not in intervals[name] else "")
  for c in positives:
    plots.plot_roc(labels == c, probs[:, c], f"{prefix}_roc{suffix(c)}.png",
                   f"ROC, {class_names[c]}: {title}", caption("roc_auc"))
    plots.plot_precision_recall(labels == c, probs[:, c], f"{prefix}_pr{suffix(c)}.png",
                                f"Precision-recall, {class_names[c]}: {title}")
  chosen = report[key]
  threshold = chosen.get("positive_class", {}).get("threshold")
  figures = "".join(f"\n{name} {value:.3f} ({caption(name)})" for name, value in (
      ("accuracy", chosen["accuracy"]),
      ("sensitivity", chosen.get("positive_class", {}).get("recall")),
      ("specificity", chosen.get("positive_class", {}).get("specificity")))
      if caption(name) and value is not None)
  plots.plot_confusion_matrix(
      np.array(chosen["confusion_matrix"]), list(class_names), f"{prefix}_confusion.png",
      f"{title}" + (f", threshold {threshold:.3f}" if threshold is not None else "") + figures)
  plots.plot_reliability(probs, labels, f"{prefix}_reliability.png", title, bins)


def _log_summary(split: str, step: int, report: dict) -> None:
  """One log line for the figures at 0.5, one for the operating point where it differs and
  one for the cross-fitted operating point on the split it is chosen on; binary figures with
  their bootstrap intervals."""
  blocks = [("at_0.5", "at 0.5")]
  chosen = report.get("at_operating_point")
  if chosen is not None and chosen != report["at_0.5"]:
    threshold = chosen.get("positive_class", {}).get("threshold")
    blocks.append(("at_operating_point", "at the operating point" + (
        "" if threshold is None else f", threshold {threshold:.3f}")))
  if "at_operating_point_crossfit" in report:
    blocks.append(("at_operating_point_crossfit", "at thresholds chosen on the other "
                   f"{crossfit.NUM_FOLDS - 1} of {crossfit.NUM_FOLDS} patient folds"))
  for key, name in blocks:
    block = report[key]
    positive = block.get("positive_class") or block["macro"]
    intervals = report.get("intervals", {}).get(key, {})
    shown = (("accuracy", block["accuracy"], "accuracy"),
             ("sensitivity", positive["recall"], "sensitivity"),
             ("specificity", positive["specificity"], "specificity"),
             ("precision", positive["precision"], None), ("F1", positive["f1"], None),
             ("ROC AUC", positive["roc_auc"], "roc_auc"))
    figures = [bootstrap.format_figure(label, value, intervals.get(figure))
               for label, value, figure in shown]
    logging.info("%s step %d %s: %s, n=%d", split, step, name, ", ".join(figures),
                 block["num_examples"])
  if "intervals" in report:
    logging.info("%s step %d intervals: %g%% percentile bootstrap, %d resamples of its %d %ss",
                 split, step, 100 * report["intervals"]["level"],
                 report["intervals"]["resamples"], report["intervals"]["groups"],
                 report["intervals"]["unit"])


def record_groups(records: Sequence[Record], data_config: ml_collections.ConfigDict) -> list[str]:
  """The patient of each record: its "patient" where the source gives one, else by
  `data.group_pattern` (else each image is its own)."""
  return splits.record_patients(records) or splits.match_groups(
      [str(r["path"]) for r in records], data_config.get("group_pattern") or "(?!)")[0]


def _intervals(groups: Sequence[str], probs: np.ndarray, labels: np.ndarray,
               thresholds: dict[str, float | np.ndarray],
               evaluation_config: ml_collections.ConfigDict) -> dict | None:
  """Bootstrap intervals of a binary report's figures at each of `thresholds` (report key ->
  threshold), resampling patients; None beyond two classes or with 0 resamples."""
  resamples = evaluation_config.get("bootstrap_resamples", 1000)
  if probs.shape[1] != 2 or not resamples:
    return None
  level = evaluation_config.get("confidence_level", 0.95)
  found = {"level": level, "resamples": resamples, "unit": bootstrap.unit(groups),
           "groups": len(set(groups))}
  for key, threshold in thresholds.items():
    found[key] = bootstrap.confidence_intervals(labels == 1, probs[:, 1], threshold, groups,
                                                resamples, level)
  return found


def _check_finite(probs: np.ndarray, records: Sequence[Record], run: trained.TrainedRun) -> None:
  """Refuses to report on NaN or infinite predictions (a damaged or diverged checkpoint)."""
  bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
  if bad.size:
    raise errors.CheckpointError(
        f"step {run.step} of {run.workdir} predicts non-finite probabilities for {bad.size} "
        f"of {len(records)} images (first: {records[bad[0]]['path']}): its parameters are "
        "damaged or diverged; no report written")


def _operating_point(
    run: trained.TrainedRun, members: Sequence[trained.TrainedRun], split: str,
    probs: np.ndarray, labels: np.ndarray, groups: Sequence[str],
    evaluation_config: ml_collections.ConfigDict, data_dir: str | None,
    mesh: jax.sharding.Mesh, shifted: Callable[[shifts.Shift], np.ndarray],
) -> dict:
  """The temperature and, for two classes, the decision threshold (for findings, one each)
  chosen on the split that `evaluation.operating_point_split` names (validation by default):
  chosen and saved now when `split` is that split, else read back (from an evaluation of that
  split first if none was saved for these settings). A tuned threshold of two classes comes
  with its cross-fitted thresholds, each chosen on all patients but one fold.
  `shifted(shift)`: the split's probabilities under an acquisition shift, for the "robust"
  threshold."""
  settings = _operating_point_settings(evaluation_config)
  if split != settings["split"]:
    return operating_point(run, evaluation_config, data_dir, mesh, members)
  point = {"step": run.step, **({"members": trained.member_names(members)} if members else {}),
           "settings": settings, "temperature": calibration.fit_temperature(probs, labels)
           if settings["temperature_scaling"] else 1.0}
  if run.task.label_is_vector:
    point.update(method=settings["method"], target_sensitivity=evaluation_config.target_sensitivity,
                 **finding_evaluation.choose_operating_point(probs, labels, run.class_names,
                                                             settings))
  elif probs.shape[1] == 2:
    method = settings["method"]
    score_sets = [calibration.apply_temperature(probs, point["temperature"])[:, 1]]
    if method == "robust":
      score_sets += [calibration.apply_temperature(shifted(shift), point["temperature"])[:, 1]
                     for shift in shifts.all_shifts()]
    choose = lambda index: _choose_threshold(labels[index] == 1, [s[index] for s in score_sets],
                                             settings)
    point.update(method=method, target_sensitivity=evaluation_config.target_sensitivity,
                 threshold=choose(np.arange(len(labels))))
    if method != "fixed" and len(set(groups)) >= crossfit.NUM_FOLDS:
      point["crossfit_thresholds"] = crossfit.crossfit_thresholds(groups, choose)[1]
  if jax.process_index() == 0:
    workdir_lib.write_atomically(trained.operating_point_path(
        run.workdir, run.step, trained.output_prefix(members)), json.dumps(point, indent=1))
  return point


def operating_point(
    run: trained.TrainedRun, evaluation_config: ml_collections.ConfigDict,
    data_dir: str | None, mesh: jax.sharding.Mesh, members: Sequence[trained.TrainedRun] = (),
) -> dict:
  """The saved operating point of the run's step (with `members`) for `evaluation_config`'s
  settings; if there is none, the split it is chosen on is evaluated first."""
  settings = _operating_point_settings(evaluation_config)
  named = eval_sets.parse(run.config.data.get("eval_sets", ""))
  if settings["split"] != "val" and settings["split"] not in named:
    raise errors.ConfigError(
        f"evaluation.operating_point_split={settings['split']}: expected val or a set of "
        f"{run.workdir}'s data.eval_sets ({', '.join(named) or 'none'})")
  if trained.load_operating_point(run, members).get("settings") != settings:
    evaluate_checkpoint(run.workdir, settings["split"], run.step, evaluation_config, data_dir,
                        mesh, members)
  return trained.load_operating_point(run, members)


def _operating_point_settings(evaluation_config: ml_collections.ConfigDict) -> dict:
  """What decides an operating point: a saved one with other settings is chosen anew."""
  method = evaluation_config.threshold_method
  return {"split": evaluation_config.get("operating_point_split", "val"), "method": method,
          "temperature_scaling": bool(evaluation_config.get("temperature_scaling", False)),
          **({"fixed_threshold": float(evaluation_config.fixed_threshold)} if method == "fixed"
             else {}),
          **({"target_sensitivity": float(evaluation_config.target_sensitivity)}
             if method == "sensitivity" else {})}


def _choose_threshold(is_positive: np.ndarray, score_sets: Sequence[np.ndarray],
                      settings: dict) -> float:
  """The threshold `settings["method"]` gives on these scores: the first of `score_sets` is
  the images as they are, the others (method robust) the same images under shifts."""
  if settings["method"] == "fixed":  # Not tuned at all.
    return settings["fixed_threshold"]
  if settings["method"] == "robust":
    return metrics.robust_threshold(is_positive, score_sets)
  return metrics.choose_threshold(is_positive, score_sets[0], settings["method"],
                                  settings.get("target_sensitivity", 0.95))


def ensemble_predictor(
    runs: Sequence[trained.TrainedRun], data_configs: Sequence[ml_collections.ConfigDict],
    views: tuple[str, ...], mesh: jax.sharding.Mesh,
) -> Callable[[Sequence[Record], shifts.Shift | None], tuple[np.ndarray, np.ndarray]]:
  """(records, shift) -> the runs' probabilities (of their task) for `records` under `shift`,
  averaged (each run with its own model, and preprocessing by its one of `data_configs`),
  and the labels."""
  predictors = [(run, inference.Predictor(run.model, data_config,
                                          run.config.training.eval_batch_size, mesh, views,
                                          run.task))
                for run, data_config in zip(runs, data_configs, strict=True)]

  def predict(records: Sequence[Record], shift: shifts.Shift | None = None):
    probs = []
    for run, predictor in predictors:
      member_probs, labels = predictor(run.variables, records, shift)
      _check_finite(member_probs, records, run)
      probs.append(member_probs)
    return np.mean(probs, axis=0), labels

  return predict


def check_members(run: trained.TrainedRun, members: Sequence[trained.TrainedRun]) -> None:
  """Ensemble members must share the task, the classes and the validation images of `run`,
  and each count once."""
  trained.check_each_once(run, members)
  for member in members:
    if member.task != run.task:
      raise errors.DataError(f"{member.workdir}: config.task={member.task.name!r}, "
                             f"{run.workdir}'s is {run.task.name!r}")
    if member.class_names != run.class_names:
      raise errors.DataError(f"{member.workdir}: classes {member.class_names} differ from "
                             f"{run.workdir}'s {run.class_names}")
    if splits.saved_validation(member.workdir) != splits.saved_validation(run.workdir):
      raise errors.DataError(
          f"{member.workdir}: validated on other images than {run.workdir} (its "
          f"{workdir_lib.SPLIT} differs): the ensemble's validation would include images "
          "a member trained on")


def evaluate_checkpoint(
    workdir: str | pathlib.Path, split: str, checkpoint: str | int,
    evaluation_config: ml_collections.ConfigDict, data_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None, members: Sequence[trained.TrainedRun] = (),
) -> dict:
  """Evaluates one checkpoint of a run on `split` ("val" or "test"); writes the report,
  predictions and figures to WORKDIR/eval/ and returns the report.

  The temperature (1 unless evaluation.temperature_scaling) and, for two classes, the
  decision threshold are chosen on validation (and saved); a test report uses them and gives
  metrics at 0.5 and at that threshold. A multilabel run's report holds each finding's
  figures at its own threshold, chosen the same way. With `members` (other runs, on the same
  validation images), the runs' probabilities are averaged: an ensemble, reported as
  ensemble_*.
  """
  return _evaluate(workdir, split, checkpoint, evaluation_config, data_dir,
                   mesh or sharding.make_mesh(), members).report


@dataclasses.dataclass(frozen=True)
class _Evaluated:
  """A checkpoint's report on a split, with the predictions it was made from."""

  report: dict
  records: list[Record]
  probs: np.ndarray  # [N, classes], after the temperature.
  labels: np.ndarray  # [N] class indices, or [N, findings] of 1, 0 and NaN.
  data_config: ml_collections.ConfigDict


def _evaluate(
    workdir: str | pathlib.Path, split: str, checkpoint: str | int,
    evaluation_config: ml_collections.ConfigDict, data_dir: str | None,
    mesh: jax.sharding.Mesh, members: Sequence[trained.TrainedRun] = (),
) -> _Evaluated:
  run = trained.load(workdir, checkpoint, mesh)
  check_members(run, members)
  if run.task.label_is_vector:
    config_checks.check_evaluation_config(evaluation_config, run.task)
  data_config = trained.data_config(run.config, data_dir)
  records = split_records(run, data_config, split)
  views = tta.configured_views(evaluation_config)
  predict = ensemble_predictor([run, *members], [trained.data_config(r.config, data_dir)
                                                 for r in (run, *members)], views, mesh)
  probs, labels = predict(records)
  groups = record_groups(records, data_config)
  point = _operating_point(run, members, split, probs, labels, groups, evaluation_config,
                           data_dir, mesh, shifted=lambda shift: predict(records, shift)[0])
  probs = calibration.apply_temperature(probs, point.get("temperature", 1.0))
  name = trained.output_prefix(members) + split
  report = {"split": split, "step": run.step, "workdir": str(run.workdir),
            "data": datasets.data_location(data_config), "tta": list(views),
            "operating_point": point,
            **({"members": trained.member_names(members)} if members else {})}
  if run.task.label_is_vector:
    report.update(finding_evaluation.finding_report(probs, labels, run.class_names,
                                                    point["thresholds"], groups,
                                                    evaluation_config))
  else:
    report.update(_class_report(probs, labels, run.class_names, point, split, groups,
                                evaluation_config))
  save_report(run, name, report, records, probs, labels, evaluation_config.calibration_bins)
  return _Evaluated(report, list(records), probs, labels, data_config)


def save_report(run: trained.TrainedRun, name: str, report: dict, records: Sequence[Record],
                probs: np.ndarray, labels: np.ndarray, calibration_bins: int) -> None:
  """Writes report `name` of the run's step with its predictions and figures (on process 0),
  then logs its summary: per finding where the report has "finding_names" (findings, or
  cross_dataset's mapped outputs), else the class report's."""
  findings = "finding_names" in report
  prefix = run.workdir / workdir_lib.EVAL / f"{name}_step{run.step}"
  if jax.process_index() == 0:
    if findings:
      finding_evaluation.write_outputs(prefix, records, probs, labels, report)
    else:
      _write_predictions(prefix.with_name(prefix.name + "_predictions.csv"), records, probs,
                         labels, run.class_names)
      _write_figures(prefix, probs, labels, run.class_names, report, calibration_bins)
    workdir_lib.write_atomically(report_path(run.workdir, name, run.step),
                                 json.dumps(report, indent=1))
  if findings:
    multilabel.log_summary(f"{name} step {run.step}", report)
  else:
    _log_summary(name, run.step, report)


def _class_report(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  point: dict, split: str, groups: Sequence[str],
                  evaluation_config: ml_collections.ConfigDict) -> dict:
  """A single-label report's figures: at 0.5, at the operating point and at the thresholds
  cross-fitted on the split it is chosen on, with their bootstrap intervals."""
  names = list(class_names)
  report = {"at_0.5": metrics.classification_report(probs, labels, names)}
  thresholds = {"at_0.5": 0.5}
  if point.get("threshold") is not None:
    report["at_operating_point"] = metrics.classification_report(
        probs, labels, names, threshold=point["threshold"])
    thresholds["at_operating_point"] = point["threshold"]
  if point.get("settings", {}).get("split") == split and "crossfit_thresholds" in point:
    per_image = np.asarray(point["crossfit_thresholds"])[crossfit.patient_folds(
        groups, len(point["crossfit_thresholds"]))]
    report["at_operating_point_crossfit"] = metrics.classification_report(
        probs, labels, names, threshold=per_image)
    thresholds["at_operating_point_crossfit"] = per_image
  intervals = _intervals(groups, probs, labels, thresholds, evaluation_config)
  if intervals is not None:
    report["intervals"] = intervals
  return report


def compare_runs(
    workdir: str | pathlib.Path, other: str | pathlib.Path, split: str,
    checkpoints: tuple[str | int, str | int], evaluation_config: ml_collections.ConfigDict,
    data_dir: str | None = None, mesh: jax.sharding.Mesh | None = None,
    members: Sequence[trained.TrainedRun] = (),
) -> dict:
  """Evaluates a checkpoint of two runs on the same images of `split`, then pairs them:
  each figure of `workdir`'s run (averaged with `members`: an ensemble) minus `other`'s,
  with a paired bootstrap interval and p-value (resampling patients), each at its own
  operating point (multilabel runs: each finding's ROC AUC and their macro mean). Writes
  WORKDIR/eval/[ensemble_]compare_*.json and returns it."""
  mesh = mesh or sharding.make_mesh()
  ours = _evaluate(workdir, split, checkpoints[0], evaluation_config, data_dir, mesh, members)
  theirs = _evaluate(other, split, checkpoints[1], evaluation_config, data_dir, mesh)
  paths = [str(r["path"]) for r in ours.records]
  position = {str(r["path"]): i for i, r in enumerate(theirs.records)}
  if sorted(paths) != sorted(position):
    raise errors.DataError(f"{workdir} and {other} have different {split} images: a paired "
                           "comparison needs the same ones (pass --data_dir)")
  order = np.array([position[path] for path in paths])
  groups = record_groups(ours.records, ours.data_config)
  resamples = evaluation_config.get("bootstrap_resamples", 1000) or 1000
  level = evaluation_config.get("confidence_level", 0.95)
  if "finding_names" in ours.report:  # Multilabel: ROC AUCs only, without thresholds.
    if (ours.report["finding_names"] != theirs.report.get("finding_names")
        or not np.array_equal(ours.labels, theirs.labels[order], equal_nan=True)):
      raise errors.DataError(f"{workdir} and {other}: a paired comparison needs the same "
                             "findings and labels")
    sides = ({}, {})
    a_minus_b = multilabel.paired_auc_difference(
        ours.labels, ours.probs, theirs.probs[order], ours.report["finding_names"], groups,
        resamples, level)
  else:
    if ours.probs.shape[1] != 2 or not np.array_equal(ours.labels, theirs.labels[order]):
      raise errors.DataError(f"{workdir} and {other}: a paired comparison needs two classes "
                             "and the same labels")
    thresholds = tuple(float(e.report["operating_point"].get("threshold", 0.5))
                       for e in (ours, theirs))
    sides = tuple({"threshold": threshold} for threshold in thresholds)
    a_minus_b = bootstrap.paired_difference(
        ours.labels == 1, ours.probs[:, 1], theirs.probs[order, 1], thresholds, groups,
        resamples, level)
  runs = [{"workdir": str(pathlib.Path(w).resolve()), "step": e.report["step"], **side,
           **({"members": e.report["members"]} if "members" in e.report else {})}
          for w, e, side in zip((workdir, other), (ours, theirs), sides, strict=True)]
  comparison = {
      "split": split, "a": runs[0], "b": runs[1], "num_examples": len(paths),
      "level": level, "resamples": resamples, "unit": bootstrap.unit(groups),
      "groups": len(set(groups)), "a_minus_b": a_minus_b}
  name = (f"{trained.output_prefix(members)}compare_{split}_step{runs[0]['step']}_vs_"
          f"{pathlib.Path(other).resolve().name}_step{runs[1]['step']}.json")
  if jax.process_index() == 0:
    workdir_lib.write_atomically(pathlib.Path(workdir) / workdir_lib.EVAL / name,
                                 json.dumps(metrics.json_safe(comparison), indent=1))
  for figure, found in comparison["a_minus_b"].items():
    logging.info("%s %s: %.4f - %.4f = %+.4f (%g%% interval %s), p=%s", split, figure,
                 found["a"], found["b"], found["difference"], 100 * level,
                 "n/a" if found["low"] is None else f"{found['low']:+.4f} to {found['high']:+.4f}",
                 "n/a" if found["p_value"] is None else f"{found['p_value']:.3f}")
  return comparison


def watch(
    workdir: str | pathlib.Path, split: str, evaluation_config: ml_collections.ConfigDict,
    data_dir: str | None = None, poll_seconds: float = 30.0, timeout_seconds: float = 3600.0,
) -> list[int]:
  """Evaluates every finished checkpoint of a (running) training job exactly once, until
  the checkpoint of its final step is done; returns the steps evaluated by this call.

  Steps whose report already exists are skipped, so a restarted watcher resumes. A watcher
  started before the trainer waits for the run to appear. Stops with an error after
  `timeout_seconds` without a new checkpoint.
  """
  workdir = pathlib.Path(workdir)
  config = trained.wait_for_config(workdir, poll_seconds, timeout_seconds)
  final_step = trained.final_step(workdir, config, data_dir)
  checkpointer = checkpointing.Checkpointer(workdir / workdir_lib.CHECKPOINTS, read_only=True)
  mesh = sharding.make_mesh()
  evaluated, last_progress = [], time.monotonic()
  try:
    while not report_path(workdir, split, final_step).exists():
      checkpointer.reload()
      todo = [s for s in checkpointer.all_steps()
              if not report_path(workdir, split, s).exists()]
      for step in todo:
        try:
          evaluate_checkpoint(workdir, split, step, evaluation_config, data_dir, mesh)
        except errors.CheckpointError as e:  # Deleted by the trainer's retention meanwhile.
          logging.warning("skipping step %d: %s", step, e)
          continue
        evaluated.append(step)
        last_progress = time.monotonic()
      if report_path(workdir, split, final_step).exists():
        break
      if time.monotonic() - last_progress > timeout_seconds:
        raise errors.CheckpointError(
            f"{workdir}: no new checkpoint for {timeout_seconds:.0f} s; the final step "
            f"{final_step} was not reached")
      time.sleep(poll_seconds)
  finally:
    checkpointer.close()
  return evaluated
