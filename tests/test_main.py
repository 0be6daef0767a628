"""`python -m xray_jax.main` as a user runs it, in a separate process."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, assert_each_log_line_once, run_in_terminal

from xray_jax.speed import huge_pages

pytestmark = pytest.mark.slow

TINY = ["--config.data.image_size=16", "--config.model.widths=4,8", "--config.model.dense=8",
        "--config.training.num_train_steps=6", "--config.training.eval_every_steps=3",
        "--config.training.checkpoint_every_steps=3", "--config.data.val_fraction=0.25"]


def best_step(workdir) -> int:
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return max((m for m in lines if "val/auc" in m), key=lambda m: (m["val/auc"], m["step"]))["step"]


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
  elapsed = [m["train/elapsed_seconds"] for m in metrics if "train/elapsed_seconds" in m]
  assert len(elapsed) >= 2 and 0 < elapsed[0] < elapsed[-1]  # Counted from the start.
  assert all("train/peak_device_memory_mib" not in m for m in metrics)  # None on a CPU.
  assert any("val/auc" in m for m in metrics)
  assert (workdir / "checkpoints" / "6").is_dir()
  assert "Resumed" not in result.stderr
  assert "Restarting with" not in result.stderr  # No re-exec unless asked for.
  assert_each_log_line_once(result.stderr)
  assert "libtpu" not in result.stderr  # No misleading TPU message on a CPU machine.
  assert "Step 1 done in" in result.stderr and "compilation included" in result.stderr
  assert "step 6/6 epoch" in result.stderr  # Not a terminal: log lines, no progress bar.
  assert (f"Finished at step 6. Best checkpoint: step {best_step(workdir)} by val/auc"
          in result.stderr)
  assert f"python -m xray_jax.evaluate --workdir={workdir} --checkpoint=best" in result.stderr

  longer = [a.replace("num_train_steps=6", "num_train_steps=9") for a in args]
  more = run_main(*longer, "--huge_pages")
  assert more.returncode == 0, more.stderr[-3000:]
  assert more.stderr.count("Resumed from the checkpoint of step 6") == 1
  restarts = more.stderr.count("Restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
  assert restarts == (1 if huge_pages.huge_pages_environ(
      {}, huge_pages.glibc_version(), huge_pages.thp_mode()) else 0)
  assert (workdir / "checkpoints" / "9").is_dir()
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert lines[:len(first_lines)] == first_lines  # Appended: nothing lost.
  assert max(json.loads(x)["step"] for x in lines) == 9


@pytest.mark.parametrize("override, message", [
    ("--config.data.source=folder --config.data.dir={missing}",
     "error: config.data.dir='{missing}': no such directory ({missing})"),
    ("--config.data.source=folder --config.data.dir={empty}",
     "error: {empty}/train: not a directory"),
    ("--config.data.dir={missing}",
     "error: config.data.dir='{missing}': no such directory ({missing}), or leave it empty"),
    ("--config.data.dir= --config.data.download_dir={missing}_downloads",
     "error: cannot fetch ChestXRay2017.zip"),  # source=auto, no folder: it downloads.
    ("--config.model.name=vgg", "error: config.model.name='vgg' is not a model"),
    ("--config.optimizer.name=rmsprop", "error: config.optimizer.name='rmsprop'"),
])
def test_main_reports_bad_input_in_one_line(dataset_dir, tmp_path, override, message):
  missing, empty = tmp_path / "missing", tmp_path / "empty"
  empty.mkdir()
  result = run_main("--config=configs/pneumonia.py:runlocal", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.dir={dataset_dir}", *TINY,
                    *override.format(missing=missing, empty=empty).split())
  assert result.returncode == 1
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith(message.format(missing=missing, empty=empty))
  if "download_dir" in override:  # Says where to put the archive or the folder layout.
    assert f"put ChestXRay2017.zip at {missing}_downloads" in last_line
    assert str(missing) in last_line
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--config.trainig.num_epochs=1", "error: --config.trainig.num_epochs: no config field "
     "'trainig'; Did you mean \"training\" instead of \"trainig\"? (see --help)"),
    ("--config.training.num_epoch=1", "error: --config.training.num_epoch: no config field "
     "'num_epoch'; Did you mean \"num_epochs\" instead of \"num_epoch\"? (see --help)"),
    ("--config.training.num_epochs=many", "error: flag --config.training.num_epochs=many: "
     "could not convert string to float: 'many' (see --help)"),
    ("--config=configs/nope.py", "[Errno 2] No such file or directory: 'configs/nope.py'"),
])
def test_mistyped_flag_or_config_is_one_line(tmp_path, flag, message):
  result = run_main("--config=configs/pneumonia.py", f"--workdir={tmp_path / 'w'}", flag)
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1
  assert message in result.stderr
  assert not (tmp_path / "w").exists()


def test_help_lists_configs_and_print_config_explains_every_field():
  usage = run_main("--help")  # absl's --help exits with status 1.
  for text in ("configs/pneumonia_cpu.py", "runlocal", "--print_config", "model=cnn|resnet18"):
    assert text in usage.stdout
  assert "--xla_" not in usage.stdout  # Only this program's flags.

  printed = run_main("--config=configs/pneumonia_cpu.py", "--print_config")
  assert printed.returncode == 0, printed.stderr
  lines = printed.stdout.strip().splitlines()
  assert "training.global_batch_size = 32  # Summed over all devices of all hosts." in lines
  assert all("  # " in line for line in lines), [x for x in lines if "  # " not in x]


def test_a_terminal_gets_a_progress_bar(dataset_dir, tmp_path):
  returncode, screen = run_in_terminal(
      [sys.executable, "-m", "xray_jax.main", "--config=configs/pneumonia.py:runlocal",
       f"--workdir={tmp_path / 'run'}", f"--config.data.dir={dataset_dir}", *TINY])
  assert returncode == 0
  assert "training: 100%" in screen and "6/6" in screen and "step/s" in screen


def test_the_trainer_loads_neither_the_evaluation_job_nor_libraries_it_may_not_need():
  """One file, one job: training imports the in-loop evaluator, not the checkpoint job; and
  no library a run of image files does not use, each seconds or tenths a process: plotting;
  torch (installed with the `bench` extra), which TensorBoard's writer would import though
  scalars need none; pydicom, loaded with the first DICOM; TFDS, with the `tfds` source."""
  assert importlib.util.find_spec("torch") is not None  # The test extra installs it.
  job = ("xray_jax.evaluators.evaluation", "xray_jax.evaluators.plots", "xray_jax.classifier")
  libraries = ("matplotlib", "torch", "pydicom", "tensorflow_datasets")
  code = ("import sys, xray_jax.main; print(sorted(m for m in sys.modules if m.split('.')[0] "
          f"in {libraries} or m in {job}))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
  assert result.stdout.strip() == "[]"
