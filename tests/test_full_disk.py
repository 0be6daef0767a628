"""A full disk (or a read-only one) during a checkpoint, a metrics write, an evaluation
report or the image cache: one WriteError line naming the file and the free space, earlier
checkpoints and metrics kept, and a rerun with space resumes.

Each test mounts small tmpfs filesystems (root only: these tests skip without the right to
mount, and fail instead under XRAY_JAX_REQUIRE_CLUSTER_TESTS=1, as in CI) and grows them
(`mount -o remount,size=`) to free space.
"""

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator

import grain
import jax
import numpy as np
import pytest
from helpers import (
  REPO_ROOT,
  REQUIRE_CLUSTER_TESTS,
  cpu_env,
  make_dataset,
  tiny_config,
  trainer_command,
)
from tensorboard.backend.event_processing import event_accumulator

from xray_jax import checkpointing, errors, logs, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import image_cache
from xray_jax.metric_writers import MetricWriter

MB = 1 << 20
FREE_SPACE = re.compile(r"\((\d+ bytes|\d+\.\d [kMGT]B) free")


@contextlib.contextmanager
def _tmpfs(path: pathlib.Path, size: int, *options: str) -> Iterator[pathlib.Path]:
  """A tmpfs of `size` bytes mounted at `path` for the block."""
  path.mkdir(parents=True, exist_ok=True)
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
      capture_output=True, text=True)
  if mounted.returncode:
    reason = f"needs the right to mount a tmpfs (root): {mounted.stderr.strip()}"
    (pytest.fail if os.environ.get(REQUIRE_CLUSTER_TESTS) == "1" else pytest.skip)(reason)
  try:
    yield path
  finally:
    subprocess.run(["umount", "--lazy", str(path)], check=True)


def _resize(path: pathlib.Path, size: int) -> None:
  subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def _used(path: pathlib.Path) -> int:
  return shutil.disk_usage(path).used


@pytest.fixture
def small_disk(tmp_path):
  """small_disk(name, size) mounts a tmpfs of `size` bytes at tmp_path/name."""
  with contextlib.ExitStack() as mounts:
    yield lambda name, size, *options: mounts.enter_context(
        _tmpfs(tmp_path / name, size, *options))


def _state(seed: int, floats: int) -> dict[str, jax.Array]:
  """Random numbers (they do not compress) of about 4 * `floats` bytes."""
  return {"w": jax.random.normal(jax.random.PRNGKey(seed), (floats,))}


def _iterator() -> grain.DatasetIterator:
  return iter(grain.MapDataset.range(8).to_iter_dataset())


def _saves_in_flight(directory: pathlib.Path) -> list[str]:
  return [p.name for p in directory.glob("*.orbax-checkpoint-tmp*")]


def test_checkpoint_larger_than_the_free_space_is_refused_before_writing(small_disk):
  disk = small_disk("disk", 2 * MB)
  checkpointer = checkpointing.Checkpointer(disk / "checkpoints")
  checkpointer.save(1, _state(1, 16_384), _iterator())
  checkpointer.wait_until_finished()
  size = checkpointing.checkpoint_bytes(checkpointer.step_dir(1))
  _resize(disk, _used(disk) + size // 2)

  with pytest.raises(errors.WriteError, match=(
      rf"cannot write the checkpoint of step 2 to {disk}/checkpoints/2: not enough free "
      r"space \(.+ free, about .+ needed\); free some space and rerun")):
    checkpointer.save(2, _state(2, 16_384), _iterator())
  checkpointer.close()
  assert not _saves_in_flight(disk / "checkpoints")  # Nothing was started.
  assert checkpointer.all_steps() == [1]
  checkpointer.check_intact(1)

  _resize(disk, 2 * MB)
  checkpointer = checkpointing.Checkpointer(disk / "checkpoints", keep=2)
  checkpointer.save(2, _state(2, 16_384), _iterator())
  checkpointer.close()
  assert checkpointer.all_steps() == [1, 2]


def test_save_cut_short_by_a_full_disk_is_one_error_and_cleaned_at_the_next_start(small_disk):
  disk = small_disk("disk", 32 * 1024)
  checkpointer = checkpointing.Checkpointer(disk / "checkpoints")
  with pytest.raises(errors.WriteError, match=(
      rf"cannot write the checkpoint of step 1 to {disk}/checkpoints/1: no space left on "
      r"device \(.+ free\); free some space and rerun")):
    checkpointer.save(1, _state(1, 16_384), _iterator())  # 64 kB: Orbax fails in its thread.
    checkpointer.wait_until_finished()
  checkpointer.close()  # Reported once: closing after the failure raises nothing.
  assert _saves_in_flight(disk / "checkpoints")

  _resize(disk, 2 * MB)
  checkpointer = checkpointing.Checkpointer(disk / "checkpoints")  # Deletes it (Orbax),
  checkpointer.save(1, _state(1, 16_384), _iterator())  # at the latest before saving.
  checkpointer.close()
  assert not _saves_in_flight(disk / "checkpoints")
  assert checkpointer.all_steps() == [1]
  checkpointer.check_intact(1)


def _fill(disk: pathlib.Path) -> None:
  """Writes a file on `disk` until no byte is free."""
  with (disk / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
    while True:
      filler.write(b"x" * 4096)
  assert shutil.disk_usage(disk).free == 0


def test_save_on_a_full_disk_is_one_error_and_closing_raises_nothing_more(small_disk):
  disk = small_disk("disk", 64 * 1024)
  checkpointer = checkpointing.Checkpointer(disk / "checkpoints")
  _fill(disk)
  with pytest.raises(errors.WriteError, match=(
      rf"cannot write the checkpoint of step 1 to {disk}/checkpoints/1: no space left on "
      r"device \(0 bytes free\); free some space and rerun")):
    checkpointer.save(1, _state(1, 16_384), _iterator())
  checkpointer.close()  # Orbax's metadata thread failed too: that save is reported once.
  assert checkpointer.all_steps() == []

  (disk / "filler").unlink()  # A rerun with space saves.
  checkpointer = checkpointing.Checkpointer(disk / "checkpoints")
  checkpointer.save(1, _state(1, 1024), _iterator())
  checkpointer.close()
  assert checkpointer.all_steps() == [1]
  checkpointer.check_intact(1)


def test_metrics_on_a_full_disk_stop_with_one_error_and_earlier_lines_are_kept(small_disk,
                                                                               capfd):
  workdir = small_disk("work", 16 * 1024)
  writer = MetricWriter(workdir)
  scalars = {f"train/metric_{i}": 0.5 for i in range(40)}
  with pytest.raises(errors.WriteError, match=(
      rf"cannot write the metrics of step (\d+) to {workdir}/"
      r"(metrics\.jsonl|tensorboard/events\.out\.tfevents\.[^:]+): "
      r"no space left on device \(.+ free\)")) as raised:
    for step in range(1, 1000):
      writer.write(step, scalars)
  with contextlib.suppress(errors.WriteError):  # The cut line may fail once more.
    writer.close()
  failed = int(re.search(r"step (\d+)", str(raised.value)).group(1))
  assert failed > 1
  assert "Traceback" not in capfd.readouterr().err  # Nor from TensorBoard's thread.

  _resize(workdir, MB)
  MetricWriter(workdir, resume_step=failed - 1).close()
  lines = (workdir / workdir_lib.METRICS).read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": step, **scalars} for step in range(1, failed)]


def test_event_file_on_a_full_disk_fails_that_write_and_keeps_the_earlier_events(small_disk):
  disk = small_disk("disk", 64 * 1024)
  script = f"""
import errno, pathlib, sys
sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
from test_full_disk import _fill
from xray_jax import event_files
events = event_files.EventFile(pathlib.Path({str(disk)!r}) / "tensorboard", purge_step=1)
events.write(1, {{"loss": 0.5}})
_fill(pathlib.Path({str(disk)!r}))
try:
  events.write(2, {{f"metric_{{i}}": 0.5 for i in range(1000)}})  # 20 kB
except OSError as e:
  print(errno.errorcode[e.errno])
events.close()
"""
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)
  assert (done.returncode, done.stdout, done.stderr) == (0, "ENOSPC\n", "")  # Nothing at exit.
  (disk / "filler").unlink()
  run = event_accumulator.EventAccumulator(str(disk / "tensorboard"))
  run.Reload()
  assert run.Tags()["scalars"] == ["loss"]
  assert [(e.step, e.value) for e in run.Scalars("loss")] == [(1, 0.5)]


def test_atomic_write_on_a_full_disk_leaves_the_old_file(small_disk):
  disk = small_disk("disk", 8 * 1024)
  path = disk / "validation.json"
  workdir_lib.write_atomically(path, "{}")
  with pytest.raises(errors.WriteError, match=(
      rf"cannot write {path}: no space left on device \(.+ free\); free some space")):
    workdir_lib.write_atomically(path, "x" * 20_000)
  assert path.read_text() == "{}"
  assert sorted(p.name for p in disk.iterdir()) == ["validation.json"]  # No .tmp left.


def test_image_cache_larger_than_the_free_space_stops_before_loading(small_disk, dataset_dir):
  disk = small_disk("cache", 16 * 1024)
  records = [{"path": str(p), "label": 0} for p in sorted(dataset_dir.rglob("img*"))]
  loaded = []
  with pytest.raises(errors.WriteError, match=(
      rf"cannot write the cache of {len(records)} training images \(config\.data\.cache_dir\) "
      rf"to {disk}: not enough free space \(16\.4 kB free, about 24\.6 kB needed\)")):
    image_cache.ImageCache.build(records, lambda r: loaded.append(r) or np.zeros((16, 16)),
                                 (16, 16), num_workers=0, read_threads=1, directory=str(disk))
  assert not loaded and not list(disk.iterdir())


def test_read_only_workdir_stops_the_trainer_at_once(small_disk, dataset_dir):
  workdir = small_disk("work", MB, "ro")
  with pytest.raises(errors.WriteError, match=(
      rf"cannot write the trainer's lock to {workdir}/trainer.lock: read-only file system "
      r"\(.+ free\); make it writable and rerun")):
    train.train_and_evaluate(tiny_config(dataset_dir), str(workdir))


def _run(command: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=REPO_ROOT, env=cpu_env(2), capture_output=True,
                        text=True, timeout=600)


def _assert_one_error_line(result: subprocess.CompletedProcess, path: pathlib.Path) -> str:
  """The run failed with one `error:` line naming a file under `path` and the free space,
  and nothing else went wrong on the way out: no traceback, no logged error."""
  assert result.returncode != 0, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert f" {path}/" in lines[0] and FREE_SPACE.search(lines[0]), lines[0]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert not re.search(r"^E\d{4} ", result.stderr, re.MULTILINE), result.stderr[-3000:]
  return lines[0]


def _steps(steps: int) -> list[str]:
  return [f"--config.training.num_train_steps={steps}", "--config.training.log_every_steps=5",
          "--config.training.eval_every_steps=10",
          "--config.training.checkpoint_every_steps=20"]


@dataclasses.dataclass(frozen=True)
class TwentySteps:
  """A trainer's workdir after 20 steps (one checkpoint), and what it took on a tmpfs."""

  workdir: pathlib.Path
  dataset: pathlib.Path
  used: int  # Bytes, the checkpoint included.
  checkpoint: int  # Bytes.


@pytest.fixture(scope="module")
def twenty_steps(tmp_path_factory) -> TwentySteps:
  root = tmp_path_factory.mktemp("twenty_steps")
  data = make_dataset(root / "data")
  with _tmpfs(root / "disk", 4 * MB) as disk:
    done = _run(trainer_command(disk / "work", data, *_steps(20)))
    assert done.returncode == 0, done.stderr[-3000:]
    found = TwentySteps(root / "work", data, _used(disk), checkpointing.checkpoint_bytes(
        disk / "work" / "checkpoints" / "20"))
    shutil.copytree(disk / "work", found.workdir)
  return found


@pytest.mark.slow
def test_trainer_stops_before_a_checkpoint_that_does_not_fit_then_resumes(small_disk,
                                                                          twenty_steps):
  earlier, data = twenty_steps.workdir, twenty_steps.dataset
  disk = small_disk("disk", 4 * MB)
  workdir = shutil.copytree(earlier, disk / "work")
  # Room for the steps to 40, not for their checkpoint.
  _resize(disk, _used(disk) + twenty_steps.checkpoint // 2)

  failed = _run(trainer_command(workdir, data, *_steps(60)))
  line = _assert_one_error_line(failed, workdir)
  assert line.startswith(f"error: cannot write the checkpoint of step 40 to {workdir}/"), line
  assert "needed" in line
  assert checkpointing.digest_problems(workdir / "checkpoints" / "20") == []
  assert not _saves_in_flight(workdir / "checkpoints")
  metrics = (workdir / workdir_lib.METRICS).read_text()
  assert metrics.startswith((earlier / workdir_lib.METRICS).read_text())

  _resize(disk, 4 * MB)
  resumed = _run(trainer_command(workdir, data, *_steps(60)))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from the checkpoint of step 20" in resumed.stderr
  assert checkpointing.Checkpointer(workdir / "checkpoints", read_only=True).latest_step() == 60
  steps = [json.loads(line)["step"] for line in
           (workdir / workdir_lib.METRICS).read_text().splitlines()]
  assert steps == sorted(steps) and steps[-1] == 60


@pytest.mark.slow
def test_trainer_whose_save_fills_the_disk_stops_with_one_line_then_reruns(small_disk,
                                                                          twenty_steps):
  data = twenty_steps.dataset
  # Room for what a run writes besides its checkpoint, and 32 kB of the checkpoint: Orbax
  # itself runs into the full disk (no earlier checkpoint tells its size). The checkpoint's
  # size varies from run to run (OCDBT writes 6 to 13 small data files, a 4 kB page each:
  # 100 to 210 kB here), so the room left for it is a fixed part of its smallest size.
  disk = small_disk("disk", twenty_steps.used - twenty_steps.checkpoint + 32 * 1024)
  workdir = disk / "work"

  _assert_one_error_line(_run(trainer_command(workdir, data, *_steps(20))), workdir)
  assert _saves_in_flight(workdir / "checkpoints")

  _resize(disk, 4 * MB)
  rerun = _run(trainer_command(workdir, data, *_steps(20)))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert not _saves_in_flight(workdir / "checkpoints")
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", read_only=True)
  assert checkpointer.all_steps() == [20]
  checkpointer.check_intact(20)


@pytest.mark.slow
def test_evaluation_report_on_a_full_disk_is_one_error_line(trained_workdir, small_disk,
                                                            tmp_path):
  workdir = shutil.copytree(trained_workdir, tmp_path / "work")
  eval_dir = small_disk("work/eval", 8 * 1024)
  command = [sys.executable, "-m", "xray_jax.evaluate", f"--workdir={workdir}",
             "--alsologtostderr"]

  _assert_one_error_line(_run(command), eval_dir)
  assert not (eval_dir / "val_step6.json").exists()

  _resize(eval_dir, 4 * MB)
  done = _run(command)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads((eval_dir / "val_step6.json").read_text())["step"] == 6



def _raised(action) -> Exception:
  try:
    action()
  except Exception as e:
    return e
  raise AssertionError("nothing raised")


def _unraisable(error: Exception) -> types.SimpleNamespace:
  """What Python hands `sys.unraisablehook` for `error`."""
  return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                               exc_traceback=error.__traceback__, err_msg=None, object=None)


def test_results_for_a_closed_event_loop_are_dropped_and_other_unraisables_reported():
  loop = asyncio.new_event_loop()
  loop.close()
  late = _raised(lambda: loop.call_soon_threadsafe(print))  # A write ending after the save.
  others = [_raised(lambda: 1 / 0), RuntimeError("Event loop is closed")]  # Raised elsewhere.
  reported = []
  for error in (late, *others):
    logs._drop_results_for_closed_loops(_unraisable(error), report=reported.append)
  assert [u.exc_value for u in reported] == others


def test_library_tracebacks_of_a_full_disk_are_kept_out_of_the_log():
  full = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database: No space '
                    "left on device [os_error_code='28']")  # TensorStore's, under Orbax.
  kept = [ValueError("RESOURCE_EXHAUSTED: out of memory"), OSError(errno.EACCES, "denied")]
  for error, keep in [(full, False), (OSError(errno.EROFS, "ro"), False),
                      *((error, True) for error in kept)]:
    record = logging.LogRecord("absl", logging.ERROR, "/site-packages/orbax/x.py", 1,
                               "save failed", (), (type(error), error, None))
    assert logs._keep(record) is keep, error
