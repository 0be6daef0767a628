"""A full disk (or a read-only one) during a checkpoint, a metrics write, an evaluation
report or the image cache: one WriteError line naming the file and the free space, earlier
checkpoints and metrics kept, and a rerun with space resumes.

Each test mounts small tmpfs filesystems (root only: these tests skip without the right to
mount, and fail instead under XRAY_JAX_REQUIRE_CLUSTER_TESTS=1, as in CI) and grows them
(`mount -o remount,size=`) to free space.
"""

import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterator

import grain
import jax
import numpy as np
import pytest
from helpers import REQUIRE_CLUSTER_TESTS, tiny_config

from xray_jax import checkpointing, errors, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import image_cache
from xray_jax.metric_writers import MetricWriter

MB = 1 << 20


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


def test_metrics_on_a_full_disk_stop_with_one_error_and_earlier_lines_are_kept(small_disk,
                                                                               capfd):
  workdir = small_disk("work", 16 * 1024)
  writer = MetricWriter(workdir)
  scalars = {f"train/metric_{i}": 0.5 for i in range(40)}
  with pytest.raises(errors.WriteError, match=(
      rf"cannot write the metrics of step (\d+) to {workdir}/(metrics\.jsonl|tensorboard): "
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

