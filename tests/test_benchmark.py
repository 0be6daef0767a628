"""The benchmark suite on a tiny config, and its PyTorch-reference subprocess with fake
scripts."""

import ctypes
import functools
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT, cpu_env, tiny_config

from xray_jax.speed import checkpoint_speed, suite

FAKE_REFERENCE = """import json, sys
print("some log line")
args = sys.argv[1:]
speed = 8.0 * int(args[args.index("--batch") + 1])
print("RESULT " + json.dumps({"cmd": args[0], "argv": args, "train_img_per_s": speed}))
"""


def _script(tmp_path, text: str):
  path = tmp_path / "reference.py"
  path.write_text(text)
  return str(path)


def test_benchmark_reports_every_figure(dataset_dir, tmp_path):
  config = tiny_config(dataset_dir)
  reference = functools.partial(
      suite.run_torch_reference, _script(tmp_path, FAKE_REFERENCE), sys.executable, "cnn",
      16, 8, 3, 2)
  results = suite.benchmark(config, steps=3, warmup=1, eval_steps=2, rounds=2,
                                data_dir=str(dataset_dir), input_batches=2,
                                profile_dir=str(tmp_path / "profile"), profile_steps=2,
                                profile_top=3, torch_reference=reference)
  json.loads(json.dumps(results))
  assert results["model"] == "cnn" and results["batch_size"] == 8
  assert results["platform"] == "cpu"
  assert results["init_s"] > 0 and results["compile_s"] > 0
  assert len(results["train_images_per_s_rounds"]) == 2
  assert results["train_images_per_s"] == pytest.approx(
      np.median(results["train_images_per_s_rounds"]))
  for key in ("train_cpu_s_per_step", "eval_images_per_s", "input_images_per_s",
              "input_first_batch_s",
              "gflop_per_step", "achieved_gflops", "matmul_peak_gflops"):
    assert results[key] > 0, key
  assert 0 < results["fraction_of_matmul_peak"] < 5
  assert results["input_over_train"] == pytest.approx(
      results["input_images_per_s"] / results["train_images_per_s"])
  assert 0 <= results["train_system_cpu_s_per_step"] <= results["train_cpu_s_per_step"]
  assert results["train_page_faults_per_step"] >= 0
  assert results["peak_rss_mib"] > 50
  assert results["mfu_bf16"] is None and results["peak_device_memory_mib"] is None
  assert results["torch_train_images_per_s_rounds"] == [64.0, 64.0]
  assert results["ratio_to_torch"] == pytest.approx(results["train_images_per_s"] / 64.0)
  assert list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert 0 < results["profile_traced_fraction"] < 5
  by_kind, top = results["profile_ms_by_kind"], results["profile_top_ms"]
  assert len(by_kind) == 4 and list(by_kind)[-1] == "others"  # 3 kinds, then the rest.
  assert len(top) == 3 and list(top.values()) == sorted(top.values(), reverse=True)
  assert max(top.values()) <= max(by_kind.values()) and min(by_kind.values()) >= 0
  table = suite.format_table(results)
  assert "ratio_to_torch" in table and "input_images_per_s" in table


def test_step_that_augments_is_timed_on_gray_images_and_evaluated_on_model_inputs(dataset_dir):
  config = tiny_config(dataset_dir)
  config.data.augment_on = "device"
  results = suite.benchmark(config, steps=2, warmup=1, eval_steps=1, data_dir=str(dataset_dir),
                            input_batches=2)
  assert results["train_images_per_s"] > 0 and results["eval_images_per_s"] > 0
  assert results["input_over_train"] > 0
  bench = suite.StepBenchmark(config, 2)
  size = config.data.image_size
  assert bench.batch["image"].shape == (8, size, size)
  assert bench.batch["image"].dtype == np.float16
  assert bench.eval_images.shape == (8, size, size, 1)


def test_checkpoint_saves_are_timed_until_final(dataset_dir, tmp_path):
  (tmp_path / "disk").mkdir()
  results = checkpoint_speed.checkpoint_speed(tiny_config(dataset_dir), saves=2,
                                              directory=str(tmp_path / "disk"))
  json.loads(json.dumps(results))
  assert results["model"] == "cnn" and results["platform"] == "cpu"
  assert len(results["checkpoint_save_s"]) == len(results["checkpoint_final_s"]) == 2
  for returned, final in zip(results["checkpoint_save_s"], results["checkpoint_final_s"],
                             strict=True):
    assert 0 < returned <= final
  # Random values do not compress: the checkpoint holds at least the state's bytes.
  assert results["checkpoint_mib"] >= results["state_mib"] > 0
  assert not list((tmp_path / "disk").iterdir())  # Its temporary folder is gone.


def test_reference_gets_the_same_model_size_and_batch(tmp_path):
  result = suite.run_torch_reference(_script(tmp_path, FAKE_REFERENCE), sys.executable,
                                         "resnet18", 128, 32, 20, 2)
  assert result["argv"] == ["speed", "--model", "resnet18", "--size", "128", "--batch", "32",
                            "--steps", "20", "--threads", "2"]
  assert result["train_img_per_s"] == 256.0


def test_reference_gets_the_extra_arguments_last(tmp_path):
  result = suite.run_torch_reference(_script(tmp_path, FAKE_REFERENCE), sys.executable,
                                     "resnet50", 224, 256, 30, 16, ["--device=cuda", "--fast"])
  assert result["argv"][1:3] == ["--model", "resnet50"]
  assert result["argv"][-2:] == ["--device=cuda", "--fast"]


@pytest.mark.parametrize("text, model, error, message", [
    ("raise ModuleNotFoundError(\"No module named 'torch'\")", "cnn", RuntimeError,
     r"pip install -e '\.\[bench\]'"),
    ("print('no result here')", "cnn", RuntimeError, "printed no RESULT line"),
    (FAKE_REFERENCE, "densenet121", ValueError, "has no 'densenet121'"),
])
def test_reference_failures_are_explained(tmp_path, text, model, error, message):
  with pytest.raises(error, match=message):
    suite.run_torch_reference(_script(tmp_path, text), sys.executable, model, 64, 8, 2, 1)


def test_missing_reference_script_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="--torch_script=.*nowhere.py"):
    suite.run_torch_reference(str(tmp_path / "nowhere.py"), sys.executable, "cnn", 64, 8,
                                  2, 1)


def test_compare_torch_without_a_script_is_a_usage_error():
  result = subprocess.run(
      [sys.executable, "-m", "xray_jax.benchmark", "--config=configs/pneumonia.py:runlocal",
       "--compare_torch"],
      cwd=REPO_ROOT, env=cpu_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "--compare_torch needs --torch_script=PATH" in result.stderr.strip().splitlines()[-1]
  assert "images/s" not in result.stdout  # It stopped before measuring anything.


def test_process_usage_counts_the_page_faults_of_fresh_memory():
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  before = suite.process_usage()
  size = 2**28  # Above the largest heap top glibc keeps: served by a fresh mmap.
  buffer = libc.malloc(size)
  ctypes.memset(buffer, 1, size)
  cpu_s, system_s, page_faults = suite.process_usage() - before
  libc.free(buffer)
  assert page_faults >= size / 2**21, (page_faults, cpu_s)  # One per page, 2 MiB or less.
  assert 0 <= system_s <= cpu_s + 1e-9  # Equal when no user time passed, up to rounding.
