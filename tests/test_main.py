"""`python -m xray_jax.main` as a user runs it, in a separate process."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = ["--config.data.image_size=16", "--config.model.widths=4,8", "--config.model.dense=8",
        "--config.training.num_train_steps=6", "--config.training.eval_every_steps=3",
        "--config.training.checkpoint_every_steps=3", "--config.data.val_fraction=0.25"]


def run_main(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  return subprocess.run(
      [sys.executable, "-m", "xray_jax.main", "--alsologtostderr", *args],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_main_trains_writes_and_resumes(dataset_dir, tmp_path):
  workdir = tmp_path / "run"
  args = ["--config=configs/pneumonia.py:runlocal", f"--workdir={workdir}",
          f"--config.data.dir={dataset_dir}", *TINY]
  result = run_main(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 devices" in result.stderr
  assert json.loads((workdir / "config.json").read_text())["model"]["widths"] == [4, 8]
  first_lines = (workdir / "metrics.jsonl").read_text().splitlines()
  metrics = [json.loads(x) for x in first_lines]
  assert {"train/loss", "train/images_per_second"} <= set(metrics[0])
  assert any("val/auc" in m for m in metrics)
  assert (workdir / "checkpoints" / "6").is_dir()
  assert "Resumed" not in result.stderr

  longer = [a.replace("num_train_steps=6", "num_train_steps=9") for a in args]
  more = run_main(*longer)
  assert more.returncode == 0, more.stderr[-3000:]
  assert "Resumed from the checkpoint of step 6" in more.stderr
  assert (workdir / "checkpoints" / "9").is_dir()
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert lines[:len(first_lines)] == first_lines  # Appended: nothing lost.
  assert max(json.loads(x)["step"] for x in lines) == 9


@pytest.mark.parametrize("override, message", [
    ("--config.data.source=folder --config.data.dir={missing}",
     "error: {missing}/train: not a directory"),
    ("--config.data.dir={missing} --config.data.download_dir={missing}_downloads",
     "error: cannot fetch ChestXRay2017.zip"),  # source=auto: no folder, so it downloads.
    ("--config.model.name=vgg", "error: config.model.name='vgg' is not a model"),
    ("--config.optimizer.name=rmsprop", "error: config.optimizer.name='rmsprop'"),
])
def test_main_reports_bad_input_in_one_line(dataset_dir, tmp_path, override, message):
  missing = tmp_path / "missing"
  result = run_main("--config=configs/pneumonia.py:runlocal", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.dir={dataset_dir}", *TINY,
                    *override.format(missing=missing).split())
  assert result.returncode == 1
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith(message.format(missing=missing))
  if "download_dir" in override:  # Says where to put the archive or the folder layout.
    assert f"put ChestXRay2017.zip at {missing}_downloads" in last_line
    assert str(missing) in last_line
  assert "Traceback" not in result.stderr
