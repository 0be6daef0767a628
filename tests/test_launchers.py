"""launch/ and benchmarks/: every script passes shellcheck, and the TPU VM launcher makes
the right gcloud calls in the right order (a recording fake gcloud on PATH), stops on a
failed step, and recreates a preempted TPU."""

import os
import pathlib
import stat
import subprocess

import pytest
from helpers import REPO_ROOT

SCRIPTS = sorted(str(p.relative_to(REPO_ROOT))
                 for folder in ("launch", "benchmarks") for p in (REPO_ROOT / folder).rglob("*")
                 if p.suffix in (".sh", ".sbatch"))

# Records each call; fails the first FAKE_TIMES calls that contain FAKE_FAIL with
# FAKE_STATUS; answers `describe` with FAKE_STATE.
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [[ -n ${FAKE_FAIL:-} && "$*" == *"$FAKE_FAIL"* ]]; then
  count=$(cat "$FAKE_LOG.failures" 2>/dev/null || echo 0)
  if [[ $count -lt ${FAKE_TIMES:-1000} ]]; then
    echo $((count + 1)) > "$FAKE_LOG.failures"
    echo "fake gcloud: failing $1 $2 $3 $4" >&2
    exit "${FAKE_STATUS:-3}"
  fi
fi
[[ "$*" == *describe* ]] && echo "${FAKE_STATE:-READY}"
exit 0
"""
BASE = ["--name=xray-v5e", "--zone=us-west4-a", "--accelerator=v5litepod-16",
        "--config=configs/pneumonia.py", "--workdir=gs://bucket/runs/r1"]
TRAIN = ("compute tpus tpu-vm ssh xray-v5e --zone=us-west4-a --worker=all --command=cd "
         "xray_jax && python3 -m xray_jax.main --auto_distributed "
         "--config=configs/pneumonia.py --workdir=gs://bucket/runs/r1")
CREATE = ("compute tpus tpu-vm create xray-v5e --zone=us-west4-a "
          "--accelerator-type=v5litepod-16 --version=tpu-ubuntu2204-base")
DELETE = "compute tpus tpu-vm delete xray-v5e --zone=us-west4-a --quiet"


@pytest.mark.cluster("shellcheck")
def test_shellcheck_passes_on_every_launcher():
  assert {"launch/local.sh", "launch/tpu_vm.sh", "launch/slurm/train.sbatch",
          "benchmarks/gpu.sh"} <= set(SCRIPTS)
  result = subprocess.run(["shellcheck", "--shell=bash", *SCRIPTS], cwd=REPO_ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.fixture
def gcloud(tmp_path) -> dict[str, str]:
  """An environment whose `gcloud` records its arguments to the file FAKE_LOG."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "gcloud"
  fake.write_text(FAKE_GCLOUD)
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
          "FAKE_LOG": str(tmp_path / "calls.log"), "WORKDIR_LOGS": str(tmp_path / "logs"),
          "TPU_POLL_SECONDS": "0"}


def _launch(env, *flags) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", "launch/tpu_vm.sh", *flags], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def _calls(env) -> list[str]:
  log = pathlib.Path(env["FAKE_LOG"])
  return log.read_text().splitlines() if log.exists() else []


def _kinds(calls: list[str]) -> list[str]:
  """Each call named by its step: create, copy, install, train, describe, delete."""
  def kind(call):
    if " scp " in call:
      return "copy"
    if "--command=rm -rf xray_jax" in call:
      return "install"
    if "xray_jax.main" in call:
      return "train"
    if "xray_jax.evaluate" in call:
      return "evaluator"
    return next(k for k in ("create", "describe", "delete") if f" {k} " in f" {call} ")
  return [kind(c) for c in calls]


def test_tpu_launcher_creates_installs_runs_on_all_workers_and_deletes(gcloud):
  result = _launch(gcloud, *BASE, "--", "--config.training.num_epochs=1")
  assert result.returncode == 0, result.stderr
  calls = _calls(gcloud)
  assert _kinds(calls) == ["create", "copy", "install", "train", "delete"]
  assert calls[0] == CREATE
  assert calls[1].endswith("xray-v5e:xray_jax.tar.gz --zone=us-west4-a --worker=all")
  assert "--worker=all" in calls[2] and "pip install -q -e ./xray_jax 'jax[tpu]'" in calls[2]
  assert calls[3] == f"{TRAIN} --config.training.num_epochs=1"
  assert calls[4] == DELETE
  for call in calls:  # Every call is shown to the user.
    assert f"+ gcloud {call}" in result.stdout or call == calls[3]


def test_tpu_launcher_stops_at_a_failed_step_and_cleans_up(gcloud):
  result = _launch({**gcloud, "FAKE_FAIL": "--command=rm -rf xray_jax"}, *BASE)
  assert result.returncode == 3
  assert "tpu_vm.sh: step 'install' failed (exit 3): gcloud compute tpus tpu-vm ssh" in (
      result.stderr)
  assert _kinds(_calls(gcloud)) == ["create", "copy", "install", "delete"]  # Never trains.

  pathlib.Path(gcloud["FAKE_LOG"]).unlink()
  kept = _launch({**gcloud, "FAKE_FAIL": "xray_jax.main"}, *BASE, "--keep")
  assert kept.returncode == 3 and "step 'train' failed" in kept.stderr
  assert _kinds(_calls(gcloud)) == ["create", "copy", "install", "train", "describe"]
  assert "--keep: xray-v5e is still running" in kept.stdout


def test_tpu_launcher_recreates_a_preempted_tpu_and_resumes(gcloud):
  env = {**gcloud, "FAKE_FAIL": "xray_jax.main", "FAKE_STATUS": "75", "FAKE_TIMES": "1"}
  result = _launch(env, *BASE, "--mode=spot", "--eval_watch")
  assert result.returncode == 0, result.stderr
  once = ["create", "copy", "install", "evaluator", "train"]
  assert _kinds(_calls(gcloud)) == [*once, "describe", "delete", *once, "delete"]
  assert _calls(gcloud)[0] == f"{CREATE} --spot"
  assert "preempted (exit 75" in result.stdout


def test_tpu_launcher_dry_run_prints_queued_resource_calls_only(gcloud):
  result = _launch(gcloud, *BASE, "--mode=queued", "--project=p1", "--dry_run")
  assert result.returncode == 0, result.stderr
  assert _calls(gcloud) == []  # Nothing ran.
  printed = [line[len("+ gcloud "):] for line in result.stdout.splitlines()
             if line.startswith("+ gcloud ")]
  assert printed[0] == ("compute tpus queued-resources create xray-v5e --node-id=xray-v5e "
                        "--zone=us-west4-a --project=p1 --accelerator-type=v5litepod-16 "
                        "--runtime-version=tpu-ubuntu2204-base")
  assert printed[-1] == ("compute tpus queued-resources delete xray-v5e --zone=us-west4-a "
                         "--project=p1 --force --quiet")
  assert len(printed) == 5


def test_tpu_launcher_names_a_missing_flag(gcloud):
  result = _launch(gcloud, "--name=x", "--zone=z")
  assert result.returncode == 2
  assert "tpu_vm.sh: --accelerator is required" in result.stderr
