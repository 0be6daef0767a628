"""Orbax checkpoints of the train state together with the input iterator's position."""

import pathlib
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from xray_jax import errors

BEST_METRIC = "val/auc"  # Metric that ranks checkpoints; higher is better.


def _best_metric(metrics: Mapping[str, float]) -> float:
  return metrics[BEST_METRIC]


class Checkpointer:
  """Saves `{state, data}` every call to `save`; keeps the latest `keep` checkpoints and
  the best one by validation AUC. Works unchanged on many hosts: every process calls it.
  A `read_only` one (for evaluation jobs) never writes or deletes."""

  def __init__(self, directory: pathlib.Path, keep: int = 1, read_only: bool = False):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(
        directory.absolute(), item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            best_fn=_best_metric, best_mode="max", preservation_policy=policy,
            create=not read_only, read_only=read_only,
            save_interval_steps=0 if read_only else 1))

  def all_steps(self) -> list[int]:
    """Steps of the finalized checkpoints, as of the last `reload`."""
    return list(self._manager.all_steps())

  def reload(self) -> None:
    """Rereads the directory, to see checkpoints another process finished since."""
    self._manager.reload()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator,
           metrics: Mapping[str, float]) -> None:
    """Starts an asynchronous save; `metrics` must hold the validation AUC."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), metrics=dict(metrics))

  def restore(self, step: int, state: Any,
              data_iterator: grain.DatasetIterator | None = None) -> Any:
    """Returns the state saved at `step`, laid out (shapes, shardings) like `state`; also
    moves `data_iterator`, if given, to where it was then."""
    items = {"state": ocp.args.StandardRestore(
        jax.tree.map(ocp.utils.to_shape_dtype_struct, state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items)).state
    except ValueError as e:
      raise errors.CheckpointError(
          f"{self._manager.directory / str(step)} does not fit the model and optimizer of "
          f"this config (changed since it was saved? use a new workdir): {e}") from e

  def restore_variables(self, step: int, abstract_variables: dict[str, Any]) -> dict[str, Any]:
    """Restores only the model variables (`params`, `batch_stats`) of the state saved at
    `step`, placed as the shardings of `abstract_variables` say."""
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                       dtype=x.dtype), abstract_variables)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract_variables, restore_args=restore_args, partial_restore=True))).state
    except (ValueError, FileNotFoundError) as e:
      raise errors.CheckpointError(
          f"{self._manager.directory / str(step)}: cannot restore the model: {e}") from e

  def restore_latest(self, state: Any,
                     data_iterator: grain.DatasetIterator | None = None) -> Any | None:
    """`restore` of the latest step; None if there is no checkpoint."""
    step = self._manager.latest_step()
    return None if step is None else self.restore(step, state, data_iterator)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
