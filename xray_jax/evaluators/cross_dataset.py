"""A run evaluated on another data source: each of its outputs (a class's softmax probability
or a finding's sigmoid) scored against a label of that source, as a per-finding report
(`python -m xray_jax.evaluate --label_map=OUTPUT=LABEL,... --config=SOURCE_CONFIG`)."""

import pathlib
import re
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from xray_jax import errors, sharding, tasks, trained
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets
from xray_jax.evaluators import calibration, evaluation, finding_evaluation, multilabel, tta


def parse_label_map(spec: str) -> list[tuple[str, str]]:
  """`--label_map`: comma-separated OUTPUT=LABEL pairs, e.g. "Pneumonia=PNEUMONIA"."""
  parts = [item.partition("=") for item in spec.split(",") if item.strip()]
  pairs = [(output.strip(), label.strip()) for output, _, label in parts]
  if not pairs or any(not sep for _, sep, _ in parts) or any(
      not output or not label for output, label in pairs):
    raise errors.ConfigError(f"--label_map={spec!r}: expected OUTPUT=LABEL pairs, comma "
                             "separated: a class or finding of the run = one of the source")
  if len(set(pairs)) < len(pairs):
    raise errors.ConfigError(f"--label_map={spec!r}: a pair is given twice")
  return pairs


def _check_names(pairs: Sequence[tuple[str, str]], outputs: Sequence[str],
                 labels: Sequence[str], workdir: pathlib.Path, source: str) -> None:
  """One ConfigError naming every output the run lacks and every label the source lacks."""
  unknown_outputs = [output for output, _ in pairs if output not in outputs]
  unknown_labels = [label for _, label in pairs if label not in labels]
  problems = []
  if unknown_outputs:
    problems.append(f"unknown model outputs {unknown_outputs} (the run {workdir} has "
                    f"{', '.join(outputs)})")
  if unknown_labels:
    problems.append(f"unknown labels {unknown_labels} (the source {source} has "
                    f"{', '.join(labels)})")
  if problems:
    raise errors.ConfigError(f"--label_map: {'; '.join(problems)}")


def _output_thresholds(run: trained.TrainedRun, point: dict) -> np.ndarray:
  """The decision threshold of each of the run's outputs at its operating point: a finding's
  own; for two classes, the saved threshold of class 1 and its complement for class 0
  (P(class 0) = 1 - P(class 1)); else 0.5."""
  thresholds = np.full(len(run.class_names), multilabel.DEFAULT_THRESHOLD)
  if run.task.label_is_vector:
    thresholds[:] = point["thresholds"]
  elif point.get("threshold") is not None:
    thresholds[:] = (1 - point["threshold"], point["threshold"])
  return thresholds


def _truth(labels: np.ndarray, column: int, task: tasks.Task) -> np.ndarray:
  """1.0 where an image has the source's label `column` (its class, or that finding present),
  0.0 where not, NaN where unknown (findings only)."""
  if task.label_is_vector:
    return labels[:, column]
  return (labels == column).astype(np.float64)


def source_name(data_config: ml_collections.ConfigDict) -> str:
  """A short name of a data source for file names: the last part of its dir, npz file or
  TFDS name."""
  location = datasets.data_location(data_config)
  where = location.get("dir") or location.get("npz_path") or location.get("tfds_name", "")
  stem = pathlib.PurePath(where.split("?")[0]).stem or location["source"]
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)


def evaluate_on_source(
    workdir: str | pathlib.Path, source_config: ml_collections.ConfigDict, split: str,
    checkpoint: str | int, evaluation_config: ml_collections.ConfigDict,
    label_map: Sequence[tuple[str, str]], data_dir: str | None = None,
    mesh: jax.sharding.Mesh | None = None, members: Sequence[trained.TrainedRun] = (),
) -> dict:
  """Scores a checkpoint of a run (averaged with `members`) on `split` of the data source
  that `source_config` (its `data` section and `task`) describes, read with the run's
  preprocessing, for each (OUTPUT, LABEL) pair of `label_map`: a row "OUTPUT -> LABEL" of a
  multilabel.finding_report, at the output's threshold of the run's own operating point
  (chosen on its own data first if not saved; `data_dir`: where the run's images are).
  Writes WORKDIR/eval/[ensemble_]cross_{SOURCE}_{split}_step{N}.json with its predictions
  table and ROC figure, and returns the report."""
  mesh = mesh or sharding.make_mesh()
  run = trained.load(workdir, checkpoint, mesh)
  evaluation.check_members(run, members)
  source_task = tasks.get(source_config)
  data_configs = [trained.source_data_config(r.config, source_config.data)
                  for r in (run, *members)]
  # eval/ holds no recorded split: validation, if carved from train, is carved for the source.
  class_names, records = evaluation.load_split(data_configs[0], run.workdir / workdir_lib.EVAL,
                                               split)
  source = source_name(data_configs[0])
  _check_names(label_map, run.class_names, class_names, run.workdir, source)
  source_task.check_labels(records, class_names)
  records = source_task.relabelled(records, "ignore")
  point = evaluation.operating_point(run, evaluation_config, data_dir, mesh, members)
  views = tta.configured_views(evaluation_config)
  probs, labels = evaluation.ensemble_predictor([run, *members], data_configs, views,
                                                mesh)(records)
  probs = calibration.apply_temperature(probs, point.get("temperature", 1.0))
  outputs = [run.class_names.index(output) for output, _ in label_map]
  scores = probs[:, outputs]
  truth = np.stack([_truth(labels, class_names.index(label), source_task)
                    for _, label in label_map], axis=1)
  rows = [f"{output} -> {label}" for output, label in label_map]
  name = f"{trained.output_prefix(members)}cross_{source}_{split}"
  report = {"split": split, "step": run.step, "workdir": str(run.workdir),
            "data": datasets.data_location(data_configs[0]), "tta": list(views),
            "label_map": rows, "operating_point": point,
            **({"members": trained.member_names(members)} if members else {}),
            **finding_evaluation.finding_report(
                scores, truth, rows, _output_thresholds(run, point)[outputs],
                evaluation.record_groups(records, data_configs[0]), evaluation_config)}
  evaluation.save_report(run, name, report, records, scores, truth,
                         evaluation_config.calibration_bins)
  return report
