"""Real multi-process training: two JAX processes on 127.0.0.1 match one process."""

import json
import socket
import subprocess

import pytest
from helpers import (
  REPO_ROOT,
  cpu_env,
  findings_trainer_command,
  trainer_command,
  write_findings_npz,
)

from xray_jax import train

pytestmark = pytest.mark.slow

STEPS = ["--config.training.num_train_steps=4", "--config.training.eval_every_steps=2",
         "--config.training.checkpoint_every_steps=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(command, devices_per_process: int, process_args: list[list[str]]):
  """Runs `command(*extra)` once per entry of `process_args`, together; their outputs."""
  procs = [subprocess.Popen(
      command(*STEPS, *extra), cwd=REPO_ROOT, env=cpu_env(devices_per_process),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for extra in process_args]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for proc, output in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, output[-3000:]
  return outputs


def _one_and_two_processes(command, tmp_path) -> tuple[list[dict], list[dict]]:
  """metrics.jsonl of `command(workdir)` run as one process of 4 devices and as two processes
  of 2."""
  single, multi = tmp_path / "single", tmp_path / "multi"
  _launch(lambda *flags: command(single, *flags), 4, [[]])
  coordinator = f"127.0.0.1:{_free_port()}"
  outputs = _launch(lambda *flags: command(multi, *flags), 2, [
      [f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={i}"]
      for i in range(2)])
  assert "4 devices, 2 processes" in outputs[0]

  def metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

  return metrics(single), metrics(multi)


def _assert_same_metrics(single: list[dict], multi: list[dict]) -> None:
  for a, b in zip(single, multi, strict=True):
    assert a.keys() == b.keys() and a["step"] == b["step"]
    for key in a:
      if key not in train.TIMING_METRICS:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_two_processes_train_like_one(dataset_dir, tmp_path):
  external = f"--config.data.eval_sets=external={dataset_dir / 'train'}"  # A class folder.
  single, multi = _one_and_two_processes(
      lambda workdir, *flags: trainer_command(workdir, dataset_dir, external, *flags), tmp_path)
  # Same batches in the same global order, same dropout masks: the same numbers, on
  # validation and on the named evaluation set alike.
  assert sum("external/auc" in m for m in multi) == 2
  _assert_same_metrics(single, multi)
  # Each process saved its own input-pipeline position in the shared checkpoint.
  data_dir = tmp_path / "multi" / "checkpoints" / "4" / "data"
  assert sorted(p.name for p in data_dir.glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def test_two_processes_train_findings_like_one(tmp_path):
  npz_path = tmp_path / "findings.npz"
  write_findings_npz(npz_path, (("train", 64), ("val", 32)))
  single, multi = _one_and_two_processes(
      lambda workdir, *flags: findings_trainer_command(
          workdir, npz_path, "--config.loss.mixup_alpha=0.4", *flags), tmp_path)
  # Label vectors with missing entries shard and gather like class indices: the same loss,
  # and the same per-finding validation AUCs.
  assert sum("val/auc_disk" in m for m in multi) == 2
  _assert_same_metrics(single, multi)
