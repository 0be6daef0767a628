"""Orbax checkpoints of the train state together with the input iterator's position, with
file digests that are checked before every restore."""

import pathlib
import shutil
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from xray_jax import checkpoint_digests, errors

# Validation metric that ranks checkpoints (higher is better), as the trainer names it.
BEST_METRIC = "val/auc"
DAMAGED_DIR = "checkpoints_damaged"  # Beside the checkpoints: damaged ones set aside.


def _best_metric(metrics: Mapping[str, float]) -> float:
  return metrics[BEST_METRIC]


class Checkpointer:
  """Saves `{state, data}` every call to `save`; keeps the latest `keep` checkpoints and
  the best one among those saved with validation metrics. Works unchanged on many hosts:
  every process calls it. A `read_only` one (for evaluation jobs) never writes or deletes.

  Once a save is final, process 0 records the digests of its files (`checkpoint_digests`);
  restores check them first and name what is damaged.
  """

  def __init__(self, directory: pathlib.Path, keep: int = 1, read_only: bool = False):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    self._directory = directory.absolute()
    self._manager = ocp.CheckpointManager(
        self._directory, item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            best_fn=_best_metric, best_mode="max", preservation_policy=policy,
            create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only,  # Saves cut short by a kill.
            save_interval_steps=0 if read_only else 1))
    self._undigested_step: int | None = None

  def step_dir(self, step: int) -> pathlib.Path:
    return self._directory / str(step)

  def all_steps(self) -> list[int]:
    """Steps of the finalized checkpoints, as of the last `reload`."""
    return list(self._manager.all_steps())

  def reload(self) -> None:
    """Rereads the directory, to see checkpoints another process finished since."""
    self._manager.reload()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best validation metric; None if no checkpoint has metrics."""
    return self._manager.best_step()

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator,
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts an asynchronous save. `metrics`, when given, must hold the validation AUC;
    checkpoints saved without them (between validations, on preemption) are never "best"."""
    self._write_digests()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)),
        metrics=None if metrics is None else dict(metrics))
    self._undigested_step = step

  def _write_digests(self) -> None:
    """Waits for the save in flight, then records its digests (process 0)."""
    self._manager.wait_until_finished()
    step, self._undigested_step = self._undigested_step, None
    if step is not None and jax.process_index() == 0 and self.step_dir(step).is_dir():
      checkpoint_digests.write(self.step_dir(step))

  def check_intact(self, step: int) -> None:
    """Raises CheckpointError naming the checkpoint and what is wrong with its files."""
    problems = checkpoint_digests.problems(self.step_dir(step))
    if problems:
      raise errors.CheckpointError(
          f"checkpoint {self.step_dir(step)} is damaged: {'; '.join(problems)}")
    if not checkpoint_digests.has_digests(self.step_dir(step)):
      logging.warning("%s has no file digests (written by an older xray_jax, or interrupted "
                      "right after saving): restoring it unverified", self.step_dir(step))

  def restore(self, step: int, state: Any,
              data_iterator: grain.DatasetIterator | None = None) -> Any:
    """Returns the state saved at `step`, laid out (shapes, shardings) like `state`; also
    moves `data_iterator`, if given, to where it was then."""
    self.check_intact(step)
    items = {"state": ocp.args.StandardRestore(
        jax.tree.map(ocp.utils.to_shape_dtype_struct, state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items)).state
    except ValueError as e:
      raise errors.CheckpointError(
          f"{self.step_dir(step)} does not fit the model and optimizer of this config "
          f"(changed since it was saved? train with that config, or in a new workdir): "
          f"{e}") from e

  def restore_variables(self, step: int, abstract_variables: dict[str, Any]) -> dict[str, Any]:
    """Restores only the model variables (`params`, `batch_stats`) of the state saved at
    `step`, placed as the shardings of `abstract_variables` say."""
    self.check_intact(step)
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                       dtype=x.dtype), abstract_variables)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract_variables, restore_args=restore_args, partial_restore=True))).state
    except (ValueError, FileNotFoundError) as e:
      raise errors.CheckpointError(
          f"{self.step_dir(step)}: cannot restore the model: {e}") from e

  def restore_latest(self, state: Any, data_iterator: grain.DatasetIterator | None = None,
                     fall_back: bool = False) -> Any | None:
    """`restore` of the latest step; None if there is no checkpoint. With `fall_back`, a
    damaged latest checkpoint is moved to DAMAGED_DIR (never deleted) with a warning, and
    the newest intact one is restored instead."""
    step = self._latest_usable_step(fall_back)
    return None if step is None else self.restore(step, state, data_iterator)

  def _latest_usable_step(self, fall_back: bool) -> int | None:
    """The newest step to restore, agreed by all processes; process 0 checks the files."""
    chosen = -1
    if jax.process_index() == 0:
      for step in sorted(self.all_steps(), reverse=True):
        problems = checkpoint_digests.problems(self.step_dir(step))
        if not problems:
          chosen = step
          break
        if not fall_back:
          break
        aside = self._set_aside(step)
        logging.error("CHECKPOINT %s IS DAMAGED (%s): moved to %s; falling back to the "
                      "previous checkpoint", self.step_dir(step), "; ".join(problems), aside)
      else:
        chosen = -2  # None left.
    chosen = int(multihost_utils.broadcast_one_to_all(np.int32(chosen)))
    self._manager.reload()
    if chosen == -1:  # Damaged and no fallback: report it.
      self.check_intact(self._manager.latest_step())
    return None if chosen == -2 else chosen

  def _set_aside(self, step: int) -> pathlib.Path:
    target = self._directory.parent / DAMAGED_DIR / f"{step}_{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(self.step_dir(step), target)
    return target

  def wait_until_finished(self) -> None:
    """Blocks until the save in flight is final and its digests are written."""
    self._write_digests()

  def close(self) -> None:
    self._write_digests()
    self._manager.close()
