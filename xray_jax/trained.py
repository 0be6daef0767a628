"""A trained run read back from its workdir: config, class names and model variables."""

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from xray_jax import (
  checkpointing,
  contrastive,
  errors,
  input_pipeline,
  models,
  optimizers,
  sharding,
  tasks,
)
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """What inference needs from a training workdir."""

  workdir: pathlib.Path
  config: ml_collections.ConfigDict  # As saved by the trainer, not as the file reads now.
  class_names: tuple[str, ...]
  model: nn.Module
  step: int
  variables: dict[str, Any]  # params and batch_stats, replicated over the mesh.

  @property
  def task(self) -> tasks.Task:
    """What the model predicts: a class (softmax) or each finding (sigmoids)."""
    return tasks.get(self.config)


def data_config(config: ml_collections.ConfigDict,
                data_dir: str | None = None) -> ml_collections.ConfigDict:
  """A copy of a run's data section, reading the images from `data_dir` when one is given
  (another copy of the dataset, same layout)."""
  copy = ml_collections.ConfigDict(config.data.to_dict())
  copy.dir = data_dir or copy.dir
  return copy


# The data fields that decide what a model sees of an image (input_pipeline.Preprocess).
PREPROCESSING_FIELDS = ("image_size", "grayscale", "mean", "std", "intensity",
                        "clahe_clip_limit")


def source_data_config(config: ml_collections.ConfigDict,
                       source: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Another source's data section (`source`: where its images are, how they are labelled)
  with the run's preprocessing, so that its model sees those images as it saw its own."""
  fields = source.to_dict()
  for key in PREPROCESSING_FIELDS:
    if key in config.data:
      fields[key] = config.data[key]
    else:  # Saved before the field existed: input_pipeline's default, as in training.
      fields.pop(key, None)
  return ml_collections.ConfigDict(fields)


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was trained with (WORKDIR/config.json)."""
  path = workdir / workdir_lib.CONFIG
  if not path.is_file():
    raise errors.DataError(f"{path}: missing; is {workdir} a training workdir?")
  saved = json.loads(path.read_text())
  # Runs saved while models took `conv_impl` (whose default, XLA's kernels, is now the only
  # way) name it in their model section.
  saved.get("model", {}).pop("conv_impl", None)
  return ml_collections.ConfigDict(saved)


def wait_for_config(workdir: pathlib.Path, poll_seconds: float,
                    timeout_seconds: float) -> ml_collections.ConfigDict:
  """`load_config`, once the trainer has written it (for jobs started beside the trainer)."""
  deadline = time.monotonic() + timeout_seconds
  while not (workdir / workdir_lib.CONFIG).is_file() and time.monotonic() < deadline:
    logging.log_every_n_seconds(logging.INFO, "waiting for a training run in %s", 600,
                                workdir)
    time.sleep(poll_seconds)
  return load_config(workdir)


def final_step(workdir: pathlib.Path, config: ml_collections.ConfigDict,
               data_dir: str | None = None) -> int:
  """The step the run ends at, as its trainer recorded it (runs of older versions: counted
  again from the dataset)."""
  path = workdir / workdir_lib.RUN
  if path.is_file():
    return json.loads(path.read_text())["total_steps"]
  num_train = len(datasets.load_splits(data_config(config, data_dir), workdir).train)
  return optimizers.schedule_length(config.training, num_train)[1]


def load_class_names(workdir: pathlib.Path) -> tuple[str, ...]:
  path = workdir / workdir_lib.CLASSES
  if not path.is_file():
    raise errors.DataError(f"{path}: missing; is {workdir} a training workdir?")
  return tuple(json.loads(path.read_text()))


def resolve_step(checkpointer: checkpointing.Checkpointer, checkpoint: str | int) -> int:
  """The step named by `checkpoint`: "latest", "best" or a step number."""
  steps = checkpointer.all_steps()
  if not steps:
    raise errors.CheckpointError("no finished checkpoint in the workdir yet")
  if checkpoint == "latest":
    return checkpointer.latest_step()
  if checkpoint == "best":
    if (best := checkpointer.best_step()) is None:
      raise errors.CheckpointError(
          f"no checkpoint has validation metrics yet (steps {steps}): use latest or a step")
    return best
  if str(checkpoint).isdigit() and int(checkpoint) in steps:
    return int(checkpoint)
  raise errors.CheckpointError(
      f"checkpoint {checkpoint!r}: expected latest, best or one of the steps {steps}")


def _restore(workdir: pathlib.Path, config: ml_collections.ConfigDict,
             checkpoint: str | int, mesh: jax.sharding.Mesh | None,
             init: Callable[[jax.Array, jax.Array], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
  """(step, variables) of the checkpoint named `checkpoint`: `init(rng, images)`'s params and
  batch_stats (their moving average, if the run kept one), replicated over `mesh`."""
  mesh = mesh or sharding.make_mesh()
  checkpointer = checkpointing.Checkpointer(
      workdir / workdir_lib.CHECKPOINTS, read_only=True,
      best_metric=config.training.get("best_metric", checkpointing.BEST_METRIC))
  try:
    step = resolve_step(checkpointer, checkpoint)
    shape = (1, *input_pipeline.input_shape(config.data))
    replicated = sharding.replicated(mesh)
    abstract = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    abstract = {
        name: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
            abstract[name])
        for name in ("params", "batch_stats") if name in abstract}
    if uses_ema(config):  # The moving average of the same variables, kept beside them.
      variables = checkpointer.restore_variables(step, {"ema": abstract})["ema"]
    else:
      variables = checkpointer.restore_variables(step, abstract)
  finally:
    checkpointer.close()
  return step, dict(variables)


def parse_run(spec: str, default: str = "latest") -> tuple[str, str]:
  """(workdir, checkpoint) of WORKDIR[:CHECKPOINT], the checkpoint latest, best or a step
  number; `default` when none is given (a colon elsewhere belongs to the path)."""
  workdir, _, checkpoint = spec.rpartition(":")
  if workdir and (checkpoint in ("latest", "best") or checkpoint.isdigit()):
    return workdir, checkpoint
  return spec, default


def load_members(specs: Sequence[str], checkpoint: str | int = "latest",
                 mesh: jax.sharding.Mesh | None = None) -> list[TrainedRun]:
  """The ensemble members `specs` name, each WORKDIR[:CHECKPOINT] (default `checkpoint`):
  other runs, or other checkpoints of the same run."""
  return [load(*parse_run(spec, str(checkpoint)), mesh) for spec in specs]


def check_each_once(run: TrainedRun, members: Sequence[TrainedRun]) -> None:
  """DataError if a checkpoint (workdir and step) is in the ensemble of `run` and `members`
  twice: it would count double."""
  seen = {(run.workdir.resolve(), run.step)}
  for member in members:
    if (member.workdir.resolve(), member.step) in seen:
      raise errors.DataError(f"{member.workdir} at step {member.step} is in the ensemble "
                             "twice: name each checkpoint once")
    seen.add((member.workdir.resolve(), member.step))


def load(workdir: str | pathlib.Path, checkpoint: str | int = "latest",
         mesh: jax.sharding.Mesh | None = None) -> TrainedRun:
  """Rebuilds the model from the run's saved config and restores its variables only, for
  evaluation, the stress test and predict."""
  workdir = pathlib.Path(workdir).expanduser()
  config = load_config(workdir)
  if contrastive.is_pretraining(config):
    raise errors.DataError(
        f"{workdir} is a self-supervised pretraining run, without a classifier: fine-tune "
        f"from it (--config.finetune.init_from={workdir}), then use that run")
  return _load_classifier(workdir, config, checkpoint, mesh)


def _load_classifier(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                     checkpoint: str | int, mesh: jax.sharding.Mesh | None) -> TrainedRun:
  class_names = load_class_names(workdir)
  model = models.create_model(config.model, len(class_names))
  step, variables = _restore(workdir, config, checkpoint, mesh, model.init)
  return TrainedRun(workdir, config, class_names, model, step, variables)


def load_variables(workdir: str | pathlib.Path, checkpoint: str | int = "latest",
                   mesh: jax.sharding.Mesh | None = None) -> tuple[int, dict[str, Any]]:
  """(step, variables) of a run's checkpoint, for fine-tuning: a classifier's (its moving
  average if kept), or a pretraining run's backbone with its `projector`
  (`contrastive.Encoder`)."""
  workdir = pathlib.Path(workdir).expanduser()
  config = load_config(workdir)
  if not contrastive.is_pretraining(config):
    run = _load_classifier(workdir, config, checkpoint, mesh)
    return run.step, run.variables
  encoder = contrastive.Encoder.create(config.model, config.pretrain,
                                       input_pipeline.input_shape(config.data))
  return _restore(workdir, config, checkpoint, mesh, encoder.init)


def uses_ema(config: ml_collections.ConfigDict) -> bool:
  """Whether the run kept a moving average of its weights (runs before EMA had none)."""
  return config.training.get("ema_decay", 0.0) > 0


def output_prefix(members: Sequence[TrainedRun]) -> str:
  """File-name prefix of evaluation outputs: "ensemble_" when other runs join this one."""
  return "ensemble_" if members else ""


def operating_point_path(workdir: pathlib.Path, step: int, prefix: str = "") -> pathlib.Path:
  """Where the decision threshold chosen on validation for `step` is kept."""
  return workdir / workdir_lib.EVAL / f"{prefix}operating_point_step{step}.json"


def load_operating_point(run: TrainedRun, members: Sequence[TrainedRun] = ()) -> dict:
  """What validation chose for the run's step (temperature, threshold), alone or averaged
  with `members`; {} if not yet (or chosen for other members)."""
  path = operating_point_path(run.workdir, run.step, output_prefix(members))
  point = json.loads(path.read_text()) if path.is_file() else {}
  return point if point.get("members", []) == member_names(members) else {}


def member_names(members: Sequence[TrainedRun]) -> list[str]:
  """How reports name ensemble members: workdir:step."""
  return [f"{m.workdir}:{m.step}" for m in members]


def load_threshold(run: TrainedRun, members: Sequence[TrainedRun] = ()) -> float | None:
  """The saved decision threshold for the run's step (with `members`), if chosen."""
  return load_operating_point(run, members).get("threshold")


def load_thresholds(run: TrainedRun, members: Sequence[TrainedRun] = ()) -> np.ndarray | None:
  """The saved per-finding decision thresholds [K] of a multilabel run's step (with
  `members`), if chosen."""
  thresholds = load_operating_point(run, members).get("thresholds")
  return None if thresholds is None else np.asarray(thresholds, np.float64)


def load_temperature(run: TrainedRun, members: Sequence[TrainedRun] = ()) -> float:
  """The temperature fitted on validation for the run's step (with `members`); 1: none.
  DataError for a multilabel run's: temperature scaling is for single-label runs only."""
  temperature = load_operating_point(run, members).get("temperature", 1.0)
  if temperature != 1.0 and tasks.get(run.config).label_is_vector:
    raise errors.DataError(
        f"{operating_point_path(run.workdir, run.step, output_prefix(members))}: holds a "
        "temperature, but temperature scaling is for single-label runs (a softmax); a "
        "multilabel run's sigmoids are read as trained")
  return temperature
