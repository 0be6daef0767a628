r"""Self-supervised pretraining (SimCLR, Chen et al. 2020) on the training images without
their labels, for fine-tuning with `--config.finetune.init_from=WORKDIR`; its binary is
`python -m xray_jax.pretrain`.

Each image gives two independently augmented views; the backbone (any registered model, cut
at the feature map it sows) and a projection MLP map them to vectors, and NT-Xent pulls
the two views of an image together against the other 2N - 2 views of the global batch.
Why SimCLR and not MoCo v2 (MoCo-CXR, Sowrirajan et al. 2021): MoCo's queue of negatives
needs BatchNorm shuffled across devices, lest the key batch's statistics give the positive
away, which a jit step with batch-global BatchNorm over the mesh cannot do; SimCLR's
in-batch negatives with global BatchNorm are exactly what the sharded step computes, on one
device or many (Azizi et al. 2021 showed SimCLR's gains on chest X-rays).

Only the train part of the validation split that a supervised run carves (the same
data.val_fraction, split_seed, group_pattern) is used, plus `pretrain.extra_dirs`: a later
fine-tuning run's validation stays unseen. The loop, checkpoints, preemption (exit 75),
the workdir lock and the metrics are the trainer's (`train.run_loop`).
"""

import dataclasses
import functools
import pathlib
import time

import jax
import ml_collections
import optax
from absl import logging

from xray_jax import (
  config_checks,
  contrastive,
  errors,
  input_pipeline,
  optimizers,
  sharding,
  train,
)
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets, folder, image_check
from xray_jax.data.records import Record
from xray_jax.data.splits import Splits

VIEWS = 2  # Augmented views per image.


def check_pretrain_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first value that cannot work in pretraining."""
  config_checks.check_config(config)
  if not contrastive.is_pretraining(config):
    raise errors.ConfigError("config.pretrain: missing; pretrain with a pretraining config "
                             "such as configs/pretrain_cpu.py")
  pre, require = config.pretrain, config_checks.require
  require(pre.temperature > 0, "pretrain.temperature", pre.temperature, "a positive number")
  require(pre.projection_dim >= 1, "pretrain.projection_dim", pre.projection_dim,
          "a positive integer")
  require(pre.projection_hidden >= 0, "pretrain.projection_hidden", pre.projection_hidden,
          "a positive integer, or 0 for the backbone's feature width")
  require(config.data.get("augment_on", "host") == "host", "data.augment_on",
          config.data.get("augment_on"), "host (pretraining augments each view on the host)")
  require(not config.data.balanced_sampling, "data.balanced_sampling",
          config.data.balanced_sampling, "False (pretraining does not use the labels)")
  require(config.training.global_batch_size >= 2, "training.global_batch_size",
          config.training.global_batch_size, "at least 2 (the other images are the negatives)")


def extra_records(extra_dirs: str, splits: Splits) -> list[Record]:
  """The images under the comma-separated folders `extra_dirs` (searched recursively), each
  once and none already in train; a validation or test image among them is a ConfigError."""
  held_out = {pathlib.Path(r["path"]).resolve() for r in [*splits.val, *splits.test]
              if "image" not in r}
  seen = {pathlib.Path(r["path"]).resolve() for r in splits.train if "image" not in r}
  records = []
  for name in filter(None, (d.strip() for d in extra_dirs.split(","))):
    root = pathlib.Path(name).expanduser()
    paths = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in folder.IMAGE_SUFFIXES and p.is_file())
    if not paths:
      raise errors.ConfigError(f"config.pretrain.extra_dirs: {name!r} holds no images "
                               f"({', '.join(folder.IMAGE_SUFFIXES)}) or is not a folder")
    clash = [p for p in paths if p.resolve() in held_out]
    if clash:
      raise errors.ConfigError(
          f"config.pretrain.extra_dirs: {name!r} holds {len(clash)} validation or test images "
          f"(e.g. {clash[0]}); pretraining must never see them")
    for path in paths:
      if path.resolve() not in seen:
        seen.add(path.resolve())
        records.append({"path": str(path), "label": -1})
  return records


def pretrain_step(state: train.TrainState, batch: dict[str, jax.Array], *,
                  schedule: optax.Schedule, temperature: float
                  ) -> tuple[train.TrainState, dict[str, jax.Array]]:
  """One optimizer step of NT-Xent on a global batch of views [N, 2, S, S, C]; metrics as
  the supervised step's, "accuracy" being the contrastive top-1."""
  rng = jax.random.fold_in(state.rng, state.step)
  views = batch["views"]
  images = views.reshape(-1, *views.shape[2:])  # Rows 2k, 2k + 1: the views of image k.

  def loss_fn(params):
    projections, batch_stats = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, rngs={"dropout": rng})
    loss, accuracy = contrastive.nt_xent(projections, temperature)
    return loss, (accuracy, batch_stats)

  (loss, (accuracy, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads),
             "learning_rate": schedule(state.step)}
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains the configured backbone in `workdir`, resuming from its latest checkpoint;
  returns {} (there is no validation). Raises as `train.train_and_evaluate` does."""
  return train.run_in_workdir(config, workdir, check_pretrain_config, _pretrain)


def _pretrain(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, float]:
  started = time.perf_counter()
  mesh = sharding.make_mesh()
  training = config.training
  sharding.check_batch_size(training.global_batch_size, mesh, "training.global_batch_size")
  splits = datasets.load_splits(config.data, workdir)
  extra = extra_records(config.pretrain.extra_dirs, splits)
  checked = image_check.check_splits(
      dataclasses.replace(splits, train=[*splits.train, *extra]), config.data)
  records = checked.train
  steps_per_epoch, total_steps = optimizers.schedule_length(training, len(records))
  train.record_run(workdir, config, splits, total_steps, steps_per_epoch)
  logging.info("Pretraining on %d images (%d of the train split, %d extra; the %d validation "
               "images are left out); %d devices, %d processes; %d steps of %d images (%d "
               "per epoch)", len(records), len(records) - len(extra), len(extra),
               len(splits.val), mesh.size, jax.process_count(), total_steps,
               training.global_batch_size, steps_per_epoch)

  input_shape = input_pipeline.input_shape(config.data)
  encoder = contrastive.Encoder.create(config.model, config.pretrain, input_shape)
  schedule = optimizers.create_learning_rate_schedule(
      config.optimizer, steps_per_epoch, total_steps)
  tx = optimizers.create_optimizer(config.optimizer, schedule)
  state = train.create_train_state(encoder, tx, input_shape, config.seed, mesh)
  train_iter = iter(input_pipeline.create_train_dataset(
      records, config.data, training.global_batch_size, config.seed, jax.process_index(),
      jax.process_count(), views=VIEWS))
  checkpointer, restored = train.open_checkpoints(workdir, training, state, train_iter)
  state = state if restored is None else restored
  start_step = int(state.step)
  step = train.jit_step(functools.partial(
      pretrain_step, schedule=schedule, temperature=config.pretrain.temperature), mesh)
  train.run_loop(workdir, training, state, step, train_iter, checkpointer, mesh, total_steps,
                 steps_per_epoch, started=started)
  logging.info("Finished pretraining at step %d. Checkpoints: %s. Next, fine-tune from it:\n"
               "  python -m xray_jax.main --config=configs/finetune_cpu.py "
               "--workdir=WORKDIR --config.data.dir=%s --config.finetune.init_from=%s",
               max(start_step, total_steps), workdir / workdir_lib.CHECKPOINTS,
               config.data.dir, workdir)
  return {}
