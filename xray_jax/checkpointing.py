"""Orbax checkpoints of the train state together with the input iterator's position, with
file digests that are checked before every restore, and a record of their validation.

Orbax makes a checkpoint appear only when it is complete, but it does not notice bytes that
change later (a bad disk, a partial copy, a truncated sync). After each save the trainer
records the size and SHA-256 of every file of the step's folder; a restore first checks them.
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from xray_jax import errors, storage
from xray_jax import workdir as workdir_lib

DIGESTS_FILE = "xray_digests.json"
_CHUNK_BYTES = 1 << 22


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def _checkpoint_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != DIGESTS_FILE)


def write_digests(step_dir: pathlib.Path) -> None:
  """Records the size and SHA-256 of every file below `step_dir`."""
  digests = {str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _checkpoint_files(step_dir)}
  workdir_lib.write_atomically(step_dir / DIGESTS_FILE, json.dumps(digests, indent=0))


def checkpoint_bytes(step_dir: pathlib.Path) -> int:
  """The disk space that the files below `step_dir` take (their allocated blocks)."""
  return sum(p.stat().st_blocks * 512 for p in step_dir.rglob("*") if p.is_file())


def has_digests(step_dir: pathlib.Path) -> bool:
  return (step_dir / DIGESTS_FILE).is_file()


def digest_problems(step_dir: pathlib.Path) -> list[str]:
  """What differs from the recorded digests: missing, truncated or changed files (empty
  when intact). A checkpoint without digests (older runs) cannot be checked: empty too."""
  if not has_digests(step_dir):
    return []
  try:
    recorded = json.loads((step_dir / DIGESTS_FILE).read_text())
  except (OSError, ValueError) as e:
    return [f"{DIGESTS_FILE} is unreadable ({e})"]
  found = []
  for name, expected in recorded.items():
    path = step_dir / name
    if not path.is_file():
      found.append(f"{name} is missing")
    elif (size := path.stat().st_size) != expected["bytes"]:
      found.append(f"{name} has {size} bytes, {expected['bytes']} were written (truncated "
                   "or overwritten)")
    elif _sha256(path) != expected["sha256"]:
      found.append(f"{name} differs from what was written (damaged bytes)")
  return found


VALIDATION_FILE = "validation.json"  # In the checkpoints folder: step -> validation metrics.
# The metric that ranks validated checkpoints by default (`training.best_metric`).
BEST_METRIC = "val/auc"


def metric_key(best_metric: str) -> tuple[str, bool]:
  """The key of `best_metric` ("SET/NAME") in VALIDATION_FILE, where validation's metrics
  stand without their "val/" prefix, and whether higher values are better (all but nll)."""
  key = best_metric.removeprefix("val/")
  return key, not key.endswith("nll")


@dataclasses.dataclass
class _KeepBest:
  """Orbax preservation policy: keeps the step that `best_step` names."""

  best_step: Callable[[], int | None]

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
    del context
    best = self.best_step()
    return [info.step == best for info in checkpoints]


class Checkpointer:
  """Saves `{state, data}` every call to `save`; keeps the latest `keep` checkpoints and
  the best validated one. Works unchanged on many hosts: every process calls it. A
  `read_only` one (for evaluation jobs) never writes or deletes.

  A checkpoint is saved before its step is validated (a failing validation loses no
  training); `record_validation` adds the metrics to VALIDATION_FILE afterwards. Once a save
  is final, process 0 records the digests of its files (`write_digests`); restores
  check them first and name what is damaged.
  """

  def __init__(self, directory: pathlib.Path, keep: int = 1, read_only: bool = False,
               best_metric: str = BEST_METRIC):
    self._best_key, self._higher_is_better = metric_key(best_metric)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep), _KeepBest(self.best_step)])
    self._directory = directory.absolute()
    self._validation = self._read_validation()
    self._manager = ocp.CheckpointManager(
        self._directory, item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            create=not read_only, read_only=read_only,
            cleanup_tmp_directories=not read_only,  # Saves cut short by a kill.
            save_interval_steps=0 if read_only else 1))
    self._undigested_step: int | None = None
    self._last_save: tuple[int, float] | None = None  # Its step, and when it began.
    self._warned_slow_save = False
    self._failed_step: int | None = None  # Of the save a WriteError was raised for.

  def step_dir(self, step: int) -> pathlib.Path:
    return self._directory / str(step)

  def all_steps(self) -> list[int]:
    """Steps of the finalized checkpoints, as of the last `reload`."""
    return list(self._manager.all_steps())

  def reload(self) -> None:
    """Rereads the directory, to see checkpoints another process finished since."""
    self._manager.reload()
    self._validation = self._read_validation()

  def _read_validation(self) -> dict[int, dict[str, float]]:
    path = self._directory / VALIDATION_FILE
    if path.is_file():
      return {int(step): m for step, m in json.loads(path.read_text()).items()}
    # Runs of older versions: the metrics were saved inside each checkpoint, as "val/NAME".
    return {int(p.parts[-3]): {k.removeprefix("val/"): v
                               for k, v in json.loads(p.read_text()).items()}
            for p in self._directory.glob("*/metrics/metrics") if p.parts[-3].isdigit()}

  def record_validation(self, step: int, metrics: Mapping[str, float]) -> None:
    """Adds the validation metrics (`metrics.summarize`) of `step`, with those of any named
    evaluation set as "SET/NAME"."""
    self._validation[step] = dict(metrics)
    if jax.process_index() == 0:
      workdir_lib.write_atomically(self._directory / VALIDATION_FILE, json.dumps(
          {str(s): m for s, m in sorted(self._validation.items())}, indent=1))

  def validation(self, step: int) -> dict[str, float] | None:
    """The validation metrics recorded for `step`, if it was validated."""
    return self._validation.get(step)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept checkpoint with the best value of the best metric (ties: the later one);
    None if none has a finite one. (The previous best is kept too until the save after the
    validation that replaced it.)"""
    steps = set(self._manager.all_steps())
    sign = 1 if self._higher_is_better else -1
    validated = [(sign * m[self._best_key], step) for step, m in self._validation.items()
                 if step in steps and isinstance(m.get(self._best_key), int | float)
                 and np.isfinite(m[self._best_key])]
    return max(validated)[1] if validated else None

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator,
           on_schedule: bool = True) -> None:
    """Starts an asynchronous save of the state and the input position. `on_schedule`: a
    save at the regular interval (not an early one at the end or on preemption), which the
    warning about slow saves compares them with. A full, over-quota or read-only filesystem
    raises WriteError (here or at the next wait)."""
    if on_schedule:
      self._warn_if_save_outlasts_interval(step)
    self._write_digests()
    self._check_free_space(step)
    self._last_save = step, time.monotonic()
    with self._reporting_write_errors():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator)))
    self._undigested_step = step

  @contextlib.contextmanager
  def _reporting_write_errors(self) -> Iterator[None]:
    """`storage.writing` for the latest save begun. A failed save is reported once: Orbax's
    threads raise its error again at each later wait and at `close`, which drops those."""
    step = self._last_save[0] if self._last_save else 0
    try:
      with storage.writing(self.step_dir(step), f"the checkpoint of step {step}"):
        yield
    except errors.WriteError:
      if step != self._failed_step:
        self._failed_step = step
        raise

  def _check_free_space(self, step: int) -> None:
    """Raises WriteError on every process, before saving `step`, when the filesystem has
    less space free than the latest checkpoint takes (process 0 looks)."""
    latest = self._manager.latest_step()
    needed = 0 if latest is None else checkpoint_bytes(self.step_dir(latest))
    short = jax.process_index() == 0 and storage.free_bytes(self._directory) < needed
    if multihost_utils.broadcast_one_to_all(np.int32(short)):
      raise storage.write_error(self.step_dir(step), f"the checkpoint of step {step}",
                                errno.ENOSPC, needed)

  def _warn_if_save_outlasts_interval(self, step: int) -> None:
    """Warns (once) when the previous save is not final yet as the save of `step` begins:
    a run killed that soon after each save would keep none of them."""
    if (self._last_save is None or self._warned_slow_save
        or not self._manager.is_saving_in_progress()):
      return
    previous, began = self._last_save
    interval = time.monotonic() - began
    with self._reporting_write_errors():
      self._manager.wait_until_finished()
    final = time.monotonic() - began
    self._warned_slow_save = True
    logging.warning(
        "The checkpoint of step %d became final %.2f s after its save began, later than the "
        "next save (step %d, %.2f s after it): a run killed within %.2f s of each save keeps "
        "none of them. Raise training.checkpoint_every_steps (now %d) until that many steps "
        "take longer than a save.", previous, final, step, interval, final, step - previous)

  def _write_digests(self) -> None:
    """Waits for the save in flight, then records its digests (process 0)."""
    with self._reporting_write_errors():
      self._manager.wait_until_finished()
    step, self._undigested_step = self._undigested_step, None
    if step is not None and jax.process_index() == 0 and self.step_dir(step).is_dir():
      write_digests(self.step_dir(step))

  def check_intact(self, step: int) -> None:
    """Raises CheckpointError naming the checkpoint and what is wrong with its files."""
    problems = digest_problems(self.step_dir(step))
    if problems:
      raise errors.CheckpointError(
          f"checkpoint {self.step_dir(step)} is damaged: {'; '.join(problems)}")
    if not has_digests(self.step_dir(step)):
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
    damaged latest checkpoint is moved to WORKDIR/checkpoints_damaged/ with a warning, and
    the newest intact one is restored instead."""
    step = self._latest_usable_step(fall_back)
    return None if step is None else self.restore(step, state, data_iterator)

  def _latest_usable_step(self, fall_back: bool) -> int | None:
    """The newest step to restore, agreed by all processes; process 0 checks the files."""
    chosen = -1
    if jax.process_index() == 0:
      for step in sorted(self.all_steps(), reverse=True):
        problems = digest_problems(self.step_dir(step))
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
    target = (self._directory.parent / workdir_lib.DAMAGED_CHECKPOINTS
              / f"{step}_{time.strftime('%Y%m%d-%H%M%S')}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(self.step_dir(step), target)
    return target

  def wait_until_finished(self) -> None:
    """Blocks until the save in flight is final and its digests are written."""
    self._write_digests()

  def close(self) -> None:
    try:
      self._write_digests()
    finally:  # Stops Orbax's threads even after a failed save.
      with self._reporting_write_errors():
        self._manager.close()
