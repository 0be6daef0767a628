"""Training loop: a jit-compiled, data-parallel train step fed by grain, with Orbax
checkpoints, periodic validation and metrics."""

import contextlib
import functools
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.experimental import multihost_utils

from xray_jax import (
  checkpointing,
  config_checks,
  errors,
  finetune,
  inference,
  input_pipeline,
  losses,
  metric_writers,
  models,
  optimizers,
  preemption,
  sharding,
  tasks,
)
from xray_jax import progress as training_progress
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets, device_augment, eval_sets, image_check

Augment = Callable[[jax.Array, jax.Array], jax.Array]  # (images, key) -> augmented images.
Metric = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, labels) -> a batch figure.


class TrainState(train_state.TrainState):
  """Params and optimizer state, plus BatchNorm statistics, the dropout key and, when
  training keeps one, an exponential moving average of the variables (else empty)."""

  batch_stats: Any
  rng: jax.Array
  ema: Any  # {"params", "batch_stats"} averaged over steps, or {}.


def create_train_state(
    model, tx: optax.GradientTransformation, input_shape: tuple[int, ...], seed: int,
    mesh: jax.sharding.Mesh, ema: bool = False,
) -> TrainState:
  """Initializes the state, replicated over the mesh; `ema`: keep a moving average too."""

  def init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init(params_rng, jnp.zeros((1, *input_shape)), train=False)
    batch_stats = variables.get("batch_stats", {})
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=batch_stats,
        rng=dropout_rng, ema={"params": variables["params"], "batch_stats": batch_stats}
        if ema else {})

  # It runs once: compiled without backend optimization, it compiles 1.9-7x sooner (on CPU, a
  # small ResNet's 16 s become 2 s), and its values differ by float32 rounding at most.
  key = jax.random.PRNGKey(seed)
  lowered = jax.jit(init, out_shardings=sharding.replicated(mesh)).lower(key)
  return lowered.compile({"xla_backend_optimization_level": 0})(key)


def train_step(
    state: TrainState, batch: dict[str, jax.Array], *, schedule: optax.Schedule,
    loss: losses.LossFn, accuracy: Metric = tasks.argmax_accuracy,
    augment: Augment | None = None, mixup_alpha: float = 0.0, ema_decay: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and batch metrics.

  `loss` (logits, labels) -> the mean loss to minimize; `accuracy` (logits, labels) -> the
  batch accuracy to report (the task's, `tasks.Task.accuracy`). `augment` (images, key) ->
  images, if given, augments the batch first, with a key of this step. With `mixup_alpha` >
  0, each image is blended with its mirror in the batch (the last with the first, ...) by one
  weight drawn from Beta(alpha, alpha), and so is the loss: the same mix of the two labels'
  losses (for binary cross-entropy, linear in its targets, the same as mixing the labels
  where both are present).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  images, labels, mix = batch["image"], batch["label"], 1.0
  if augment is not None:
    images = augment(images, jax.random.fold_in(dropout_rng, 2))
  if mixup_alpha > 0:
    mix = jax.random.beta(jax.random.fold_in(dropout_rng, 1), mixup_alpha, mixup_alpha)
    images = mix * images + (1.0 - mix) * images[::-1]

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    value = loss(logits, labels)
    if mixup_alpha > 0:
      value = mix * value + (1.0 - mix) * loss(logits, labels[::-1])
    return value, (logits, updates["batch_stats"])

  (value, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  metrics = {
      "loss": value,
      "accuracy": accuracy(logits, labels),
      "grad_norm": optax.global_norm(grads),
      "learning_rate": schedule(state.step),
  }
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay > 0:
    state = state.replace(ema=update_ema(state.ema, {"params": state.params,
                                                      "batch_stats": state.batch_stats},
                                         ema_decay, state.step))
  return state, metrics


def update_ema(ema: Any, variables: Any, decay: float, step: jax.Array) -> Any:
  """The moving average after `step` updates. The decay ramps up, (1 + step) / (10 + step)
  until it reaches `decay`, so early weights (often random) fade out of short runs."""
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda a, v: rate * a + (1.0 - rate) * v, ema, variables)


def inference_variables(state: TrainState) -> dict[str, Any]:
  """The variables that validation and evaluation use: the moving average when kept."""
  return state.ema or {"params": state.params, "batch_stats": state.batch_stats}


def jit_step(step: Callable[..., tuple[Any, dict[str, jax.Array]]], mesh: jax.sharding.Mesh):
  """`step` (state, batch) -> (state, metrics) compiled for `mesh`: state replicated and
  donated, batch sharded."""
  replicated = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, sharding.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_train_step(mesh: jax.sharding.Mesh, **step_args: Any):
  """`train_step` compiled for `mesh` (`jit_step`) with its keyword arguments `step_args`
  (schedule, loss, ...)."""
  return jit_step(functools.partial(train_step, **step_args), mesh)


def _mean_metrics(pending: list[dict[str, jax.Array]], step: int) -> dict[str, float]:
  """Averages the metrics of the steps since the last call; fails on NaN or Inf."""
  stacked = jax.device_get(pending)
  means = {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}
  for metrics in stacked:
    if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
      raise errors.TrainingDivergedError(
          f"loss={metrics['loss']}, grad_norm={metrics['grad_norm']} between steps "
          f"{step - len(pending) + 1} and {step}: training stopped; the checkpoints "
          "already saved are kept (try a lower config.optimizer.learning_rate)")
  return means


# Train metrics that measure the machine, not the training: they differ between runs.
TIMING_METRICS = ("train/images_per_second", "train/elapsed_seconds",
                  "train/peak_device_memory_mib")


def _peak_device_memory() -> dict[str, float]:
  """{"train/peak_device_memory_mib": MiB} of the first local device where the backend
  reports it (GPU, TPU), else {}."""
  peak = training_progress.peak_device_memory_mib()
  return {} if peak is None else {"train/peak_device_memory_mib": peak}


def _every(interval: int, steps_per_epoch: int) -> int:
  return steps_per_epoch if interval == -1 else interval


def evaluate_all(evaluators: dict[str, inference.Evaluator],
                 variables: dict[str, Any]) -> dict[str, dict[str, float]]:
  """Each set's metrics (`metrics.summarize`): validation and the named sets."""
  return {name: evaluator.evaluate(variables) for name, evaluator in evaluators.items()}


def prefixed(results: dict[str, dict[str, float]]) -> dict[str, float]:
  """{"SET/METRIC": value} of `evaluate_all`'s results, as metrics.jsonl holds them."""
  return {f"{name}/{k}": v for name, found in results.items() for k, v in found.items()}


def validation_record(results: dict[str, dict[str, float]]) -> dict[str, float]:
  """What the checkpointer records of a step: validation's metrics as they are, the named
  sets' as "SET/METRIC" (`checkpointing.metric_key`)."""
  return {**results["val"], **prefixed({k: v for k, v in results.items() if k != "val"})}


def record_split(workdir: pathlib.Path, splits: datasets.Splits) -> None:
  """Writes a validation split made for this run to the workdir, where a resumed run and
  evaluation jobs read it back."""
  if splits.new_split is not None:
    workdir_lib.write_atomically(workdir / workdir_lib.SPLIT,
                                 json.dumps(splits.new_split, indent=1))


def record_run(workdir: pathlib.Path, config: ml_collections.ConfigDict,
               splits: datasets.Splits, total_steps: int, steps_per_epoch: int,
               class_names: tuple[str, ...] | None = None) -> None:
  """Writes (process 0) the run's validation split, length, class names if given, and its
  config last: jobs that wait for a run wait for the config."""
  if jax.process_index() != 0:
    return
  record_split(workdir, splits)
  workdir_lib.write_atomically(workdir / workdir_lib.RUN, json.dumps(
      {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}))
  if class_names is not None:
    workdir_lib.write_atomically(workdir / workdir_lib.CLASSES, json.dumps(list(class_names)))
  workdir_lib.write_atomically(workdir / workdir_lib.CONFIG, config.to_json_best_effort(indent=2))


def open_checkpoints(workdir: pathlib.Path, training: ml_collections.ConfigDict, state: Any,
                     train_iter: grain.DatasetIterator
                     ) -> tuple[checkpointing.Checkpointer, Any | None]:
  """The run's checkpointer, and the state of its latest checkpoint (`train_iter` moved to
  where it was then), or None when there is none yet."""
  checkpointer = checkpointing.Checkpointer(workdir / workdir_lib.CHECKPOINTS,
                                            training.keep_checkpoints,
                                            best_metric=training.best_metric)
  restored = checkpointer.restore_latest(state, train_iter, fall_back=training.restore_fallback)
  if restored is not None:
    logging.info("Resumed from the checkpoint of step %d in %s", int(restored.step), workdir)
  return checkpointer, restored


def run_loop(
    workdir: pathlib.Path, training: ml_collections.ConfigDict, state: Any,
    step_fn: Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]],
    train_iter: grain.DatasetIterator, checkpointer: checkpointing.Checkpointer,
    mesh: jax.sharding.Mesh, total_steps: int, steps_per_epoch: int,
    evaluate: Callable[[Any], dict[str, dict[str, float]]] | None = None,
    started: float | None = None,
) -> dict[str, float]:
  """Runs `step_fn` (state, global batch) -> (state, metrics) from the state's step to
  `total_steps` on batches of `train_iter`, the loop that supervised training and
  pretraining share.

  Writes the train metrics (loss, accuracy, grad_norm, learning_rate) every
  `training.log_every_steps`, with the seconds since `started` (a `time.perf_counter()`
  reading; none: since this call) and, where the backend reports it, the first device's peak
  memory (TIMING_METRICS), saves the state with the iterator's position every
  `training.checkpoint_every_steps`, at the end and on a preemption notice or Ctrl-C (then
  raises `errors.Preempted` or `errors.Interrupted`), and, given `evaluate` (state -> each
  set's metrics), evaluates every `training.eval_every_steps` and at the end. Returns the
  last evaluation's metrics ("SET/METRIC"; {} without `evaluate`) and closes `checkpointer`.
  """
  is_chief = jax.process_index() == 0
  start_step = int(state.step)
  writer = metric_writers.MetricWriter(workdir, start_step, enabled=is_chief)
  preemption_watcher = preemption.PreemptionWatcher()

  progress = training_progress.TrainingProgress(
      start_step, total_steps, steps_per_epoch, training.global_batch_size, enabled=is_chief)
  eval_every = _every(training.eval_every_steps, steps_per_epoch)
  checkpoint_every = _every(training.checkpoint_every_steps, steps_per_epoch)
  val_metrics: dict[str, float] = {}
  pending: list[dict[str, jax.Array]] = []
  logging.info("Compiling the train step; step %d follows", start_step + 1)
  loop_started = time.perf_counter()
  started = loop_started if started is None else started
  try:
    for step in range(start_step + 1, total_steps + 1):
      batch = sharding.to_global_batch(next(train_iter), mesh)
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
      progress.advance()
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        logging.info("Step %d done in %.1f s, compilation included", step,
                     time.perf_counter() - loop_started)
      is_last = step == total_steps
      preempted = preemption_watcher.should_stop(step) and not is_last
      do_eval = ((step % eval_every == 0 or is_last) and not preempted
                 and evaluate is not None)
      do_save = step % checkpoint_every == 0 or is_last or preempted
      if step % training.log_every_steps == 0 or do_eval or do_save:
        train_metrics = _mean_metrics(pending, step)
        pending = []
        images_per_s = progress.report(step, train_metrics)
        writer.write(step, {
            **{f"train/{k}": v for k, v in train_metrics.items()},
            "train/epoch": step / steps_per_epoch, "train/images_per_second": images_per_s,
            "train/elapsed_seconds": time.perf_counter() - started,
            **_peak_device_memory()})
      if do_save:  # Before validation: a failure there must not lose the training.
        checkpointer.save(step, state, train_iter, on_schedule=step % checkpoint_every == 0)
      if do_eval:
        results = evaluate(state)
        checkpointer.record_validation(step, validation_record(results))
        progress.show_evaluation(step, results)
        val_metrics = prefixed(results)
        writer.write(step, val_metrics)
      if preempted:
        checkpointer.wait_until_finished()
        interrupted = preemption_watcher.interrupted()  # Ctrl-C on one process: on all.
        # Exit together: a launcher may stop every process once the first one exits.
        multihost_utils.sync_global_devices("xray_jax: preemption checkpoint final")
        raise (errors.Interrupted if interrupted else errors.Preempted)(step)
      if do_eval or do_save:
        progress.restart_clock()  # Keep validation and saving out of images/s.
    if start_step >= total_steps:
      logging.info("Training already finished at step %d in %s", start_step, workdir)
      if evaluate is not None:
        val_metrics = prefixed(evaluate(state))
  finally:
    progress.close()
    with contextlib.ExitStack() as closing:  # Each closes even if one before it fails.
      closing.callback(preemption_watcher.close)  # Last: Ctrl-C during the last save waits.
      closing.callback(writer.close)
      checkpointer.close()
  return val_metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains the configured model in `workdir`, resuming from its latest checkpoint, and
  returns the last metrics of validation and the named sets ("val/auc", "external/auc", ...).

  Raises `errors.Preempted` after saving a checkpoint when a preemption notice (SIGTERM)
  arrives, `errors.Interrupted` after saving one on Ctrl-C (SIGINT), and
  `errors.WorkdirBusyError` if another trainer uses `workdir`.
  """
  return run_in_workdir(config, workdir, config_checks.check_config, _train)


def run_in_workdir(
    config: ml_collections.ConfigDict, workdir: str,
    check: Callable[[ml_collections.ConfigDict], None],
    job: Callable[[ml_collections.ConfigDict, pathlib.Path], dict[str, float]],
) -> dict[str, float]:
  """`job(config, workdir)` on the config checked by `check`, resolved, with its local data
  paths absolute, holding the workdir's lock (`workdir_lib.hold`)."""
  check(config)
  config = config.copy_and_resolve_references()
  datasets.make_paths_absolute(config.data)
  workdir = pathlib.Path(workdir)
  with workdir_lib.hold(workdir):
    return job(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, float]:
  started = time.perf_counter()  # train/elapsed_seconds counts data loading too.
  mesh = sharding.make_mesh()
  training = config.training
  sharding.check_batch_size(training.global_batch_size, mesh, "training.global_batch_size")
  sharding.check_batch_size(training.eval_batch_size, mesh, "training.eval_batch_size")

  task = tasks.get(config)
  splits = image_check.check_splits(
      datasets.load_splits(config.data, workdir), config.data)
  num_classes = len(splits.class_names)
  eval_records = {"val": splits.val, **eval_sets.load(config.data.eval_sets, splits)}
  for records in (splits.train, *eval_records.values()):
    task.check_labels(records, splits.class_names)
  train_records = task.relabelled(splits.train, config.loss.uncertain)
  eval_records = {name: task.relabelled(records, "ignore")
                  for name, records in eval_records.items()}
  steps_per_epoch, total_steps = optimizers.schedule_length(training, len(splits.train))
  record_run(workdir, config, splits, total_steps, steps_per_epoch, splits.class_names)
  logging.info("%d classes %s; %d train images, evaluated on %s; %d devices, %d processes; "
               "%d steps of %d images (%d per epoch)", num_classes, splits.class_names,
               len(splits.train),
               ", ".join(f"{len(r)} {name}" for name, r in eval_records.items()),
               mesh.size, jax.process_count(),
               total_steps, training.global_batch_size, steps_per_epoch)

  model = models.create_model(config.model, num_classes)
  schedule = optimizers.create_learning_rate_schedule(
      config.optimizer, steps_per_epoch, total_steps)
  tx = optimizers.create_optimizer(config.optimizer, schedule, config.finetune)
  state = create_train_state(model, tx, input_pipeline.input_shape(config.data), config.seed,
                             mesh,
                             ema=training.ema_decay > 0)

  train_iter = iter(input_pipeline.create_train_dataset(
      train_records, config.data, training.global_batch_size, config.seed,
      jax.process_index(), jax.process_count()))
  checkpointer, restored = open_checkpoints(workdir, training, state, train_iter)
  if restored is not None:
    state = restored
  elif config.finetune.init_from:
    finetune.check_validation_unseen(config.finetune.init_from, config.data, splits)
    state = finetune.load_source(state, config.finetune.init_from, mesh)

  p_train_step = make_train_step(
      mesh, schedule=schedule,
      loss=task.create_loss(config.loss, np.array([r["label"] for r in train_records]),
                            num_classes),
      accuracy=task.accuracy, augment=device_augment.step_augment(config.data),
      mixup_alpha=config.loss.mixup_alpha, ema_decay=training.ema_decay)
  evaluators = {name: inference.Evaluator(model, records, config.data, training.eval_batch_size,
                                          mesh, task=task, class_names=splits.class_names)
                for name, records in eval_records.items()}
  start_step = int(state.step)
  val_metrics = run_loop(
      workdir, training, state, p_train_step, train_iter, checkpointer, mesh,
      total_steps, steps_per_epoch,
      evaluate=lambda state: evaluate_all(evaluators, inference_variables(state)),
      started=started)
  if jax.process_index() == 0:
    best = checkpointer.best_step()
    training_progress.log_summary(workdir, max(start_step, total_steps), best,
                                  checkpointer.validation(best), training.best_metric)
  return val_metrics

