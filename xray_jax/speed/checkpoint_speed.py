"""How long the trainer's checkpoint saves take: until `save` returns (the steps wait that
long) and until the checkpoint is final, the longest a run must live after a save to keep
it (docs/training.md, Checkpoints and failures)."""

import pathlib
import tempfile
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from xray_jax import checkpointing, input_pipeline, models, optimizers, sharding, train


def checkpoint_speed(config: ml_collections.ConfigDict, saves: int, num_classes: int = 2,
                     directory: str = "") -> dict[str, Any]:
  """Saves the config's train state (parameters, BatchNorm statistics, optimizer state and
  the moving average when kept) `saves` times with the trainer's Checkpointer, into
  `directory` (a new temporary folder if empty), one save at a time; returns each save's
  seconds until `save` returned and until it was final with its digests written. The
  state's values are random: the zeros of a new optimizer state compress, a trained one's
  moments do not."""
  mesh = sharding.make_mesh()
  tx = optimizers.create_optimizer(
      config.optimizer, optimizers.create_learning_rate_schedule(config.optimizer, 100, 1000))
  state = train.create_train_state(
      models.create_model(config.model, num_classes), tx,
      input_pipeline.input_shape(config.data), config.seed, mesh,
      ema=config.training.ema_decay > 0)
  state = _randomized(state)
  data = iter(grain.MapDataset.range(1).to_iter_dataset())
  with tempfile.TemporaryDirectory(dir=directory or None) as folder:
    checkpointer = checkpointing.Checkpointer(pathlib.Path(folder) / "checkpoints")
    save_s, final_s = [], []
    for step in range(1, saves + 1):
      start = time.perf_counter()
      checkpointer.save(step, state, data)
      save_s.append(time.perf_counter() - start)
      checkpointer.wait_until_finished()
      final_s.append(time.perf_counter() - start)
    checkpointer.close()
    size = sum(p.stat().st_size for p in checkpointer.step_dir(saves).rglob("*") if p.is_file())
  return {"model": config.model.name, "image_size": config.data.image_size,
          "platform": jax.default_backend(), "devices": jax.device_count(),
          "state_mib": sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20,
          "checkpoint_mib": size / 2**20, "checkpoint_save_s": save_s,
          "checkpoint_final_s": final_s,
          "checkpoint_final_s_median": float(np.median(final_s))}


def _randomized(state: Any) -> Any:
  """`state` with random normal values in its floating-point arrays, placed as they were."""
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.device_put(jax.random.normal(key, x.shape, x.dtype), x.sharding)
      if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x
      for key, x in zip(keys, leaves, strict=True)])
