"""The benchmark suite behind `python -m xray_jax.benchmark`: compile time, train and eval
images/s, the input pipeline's rate, memory, achieved GFLOP/s and MFU, and the PyTorch
reference run side by side."""

import json
import pathlib
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xray_jax import input_pipeline, losses, models, optimizers, progress, sharding, train
from xray_jax.data import device_augment, folder
from xray_jax.speed import model_flops, step_profile

# The models of benchmarks/torch_reference.py (the peer script of the CPU comparisons has
# the first two).
TORCH_MODELS = ("cnn", "resnet18", "resnet50")
# Dense bfloat16 peak TFLOP/s per chip, for MFU; chips not listed get none.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L4": 121.0,
                    "TPU v4": 275.0, "TPU v5e": 197.0, "TPU v5p": 459.0}


def process_usage() -> np.ndarray:
  """[user + system CPU seconds, system CPU seconds, minor page faults] of this process so
  far. On a shared machine CPU time grows with the work done, where wall time also grows
  with the other processes' load; system time and page faults show memory mapped afresh."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return np.array([usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_minflt])


def peak_rss_mib() -> float:
  """This process's peak resident memory (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(size: int | None = None, repeats: int = 5) -> float:
  """GFLOP/s of the best of `repeats` square matmuls of random numbers: float32 and 2048 wide
  on the CPU, bfloat16 and 8192 wide on accelerators (smaller ones leave a GPU idle)."""
  on_cpu = jax.default_backend() == "cpu"
  size = size or (2048 if on_cpu else 8192)
  dtype = jnp.float32 if on_cpu else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  best = min(_timed(lambda: matmul(a)) for _ in range(repeats + 1))
  return 2 * size**3 / best / 1e9


def bf16_peak_tflops() -> float | None:
  kind = jax.devices()[0].device_kind
  return max((v for k, v in BF16_PEAK_TFLOPS.items() if k in kind), default=None)


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _random_batch(config: ml_collections.ConfigDict, batch_size: int, num_classes: int,
                  for_train_step: bool = True):
  """A batch of random images as the input pipeline delivers them: normalized model inputs,
  or for a train step that augments (`data.augment_on=device`) gray images in [0, 1]."""
  shape = (batch_size, *input_pipeline.input_shape(config.data))
  rng = np.random.default_rng(0)
  images = (rng.uniform(size=shape[:-1]).astype(device_augment.STEP_INPUT_DTYPE)
            if for_train_step and device_augment.on_device(config.data)
            else rng.normal(size=shape).astype(np.float32))
  return {"image": images, "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}


class StepBenchmark:
  """A compiled train step on a fixed random batch, timed in rounds."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    mesh = sharding.make_mesh()
    self.batch_size = config.training.global_batch_size
    self.model = models.create_model(config.model, num_classes)
    schedule = optimizers.create_learning_rate_schedule(config.optimizer, 100, 1000)
    tx = optimizers.create_optimizer(config.optimizer, schedule)
    start = time.perf_counter()
    self.state = jax.block_until_ready(train.create_train_state(
        self.model, tx, input_pipeline.input_shape(config.data), 0, mesh))
    self.init_s = time.perf_counter() - start
    host_batch = _random_batch(config, self.batch_size, num_classes)
    self.batch = sharding.to_global_batch(host_batch, mesh)
    self.eval_images = sharding.to_global_batch(
        _random_batch(config, self.batch_size, num_classes, for_train_step=False), mesh)["image"]
    start = time.perf_counter()
    step = train.make_train_step(
        mesh, schedule=schedule,
        loss=losses.create_loss(config.loss, host_batch["label"], num_classes),
        augment=device_augment.step_augment(config.data))
    traced = step.trace(self.state, self.batch)
    self.step = traced.lower().compile()
    self.compile_s = time.perf_counter() - start
    self.flops_per_step = model_flops.jaxpr_flops(traced.jaxpr.jaxpr)

  def run(self, steps: int) -> list[float]:
    """Runs `steps` train steps; returns each one's seconds."""
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.state, metrics = self.step(self.state, self.batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    return times

  def profile(self, steps: int, log_dir: str) -> list[step_profile.OpTime]:
    """The step's HLO instructions, each with its seconds per step in a profiler trace of
    `steps` steps written under `log_dir`."""
    return step_profile.profile(lambda: self.run(1), self.step.as_text(), steps, log_dir)

  def eval_images_per_s(self, batches: int) -> float:
    """Inference (train=False) throughput on the same batch, after one untimed call."""
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    predict = jax.jit(lambda v, x: self.model.apply(v, x, train=False))
    images = self.eval_images
    jax.block_until_ready(predict(variables, images))
    seconds = sum(_timed(lambda: predict(variables, images)) for _ in range(batches))
    return batches * self.batch_size / seconds


def input_pipeline_speed(config: ml_collections.ConfigDict, data_dir: str,
                         batches: int) -> tuple[float, float]:
  """The training pipeline (decode, resize, standardize, augment, batch) over the train split
  of a folder dataset: seconds to its first batch (worker start-up, and the image cache with
  `data.cache_images`), and images/s in steady state. The batches that workers buffered while
  the first one was made are read before the clock starts, so they do not inflate the rate."""
  records = folder.load_folder_dataset(data_dir).splits["train"]
  batch_size = config.training.global_batch_size
  start = time.perf_counter()
  iterator = iter(input_pipeline.create_train_dataset(records, config.data, batch_size,
                                                      config.seed))
  next(iterator)
  first_batch_s = time.perf_counter() - start
  for _ in range(max(1, config.data.num_workers) * (config.data.prefetch + 1)):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return first_batch_s, batches * batch_size / (time.perf_counter() - start)


def run_torch_reference(script: str, python: str, model: str, size: int, batch: int,
                        steps: int, threads: int,
                        extra_args: Sequence[str] = ()) -> dict[str, Any]:
  """Runs the reference's `speed` command (with `extra_args`, such as `--device=cuda` and
  `--fast` for benchmarks/torch_reference.py) and returns its RESULT record."""
  path = pathlib.Path(script)
  if not path.is_file():
    raise FileNotFoundError(f"--torch_script={script}: no such file (the plain-PyTorch "
                            "reference script whose `speed` command prints RESULT {{json}})")
  if model not in TORCH_MODELS:
    raise ValueError(f"the PyTorch reference has no {model!r}; it has {', '.join(TORCH_MODELS)}")
  command = [python, str(path), "speed", "--model", model, "--size", str(size), "--batch",
             str(batch), "--steps", str(steps), "--threads", str(threads), *extra_args]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    hint = (" (install it: pip install -e '.[bench]')"
            if "No module named 'torch'" in done.stderr else "")
    raise RuntimeError(f"{' '.join(command)} failed{hint}:\n{done.stderr[-2000:]}")
  for line in done.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{' '.join(command)} printed no RESULT line:\n{done.stdout[-2000:]}")


def benchmark(config: ml_collections.ConfigDict, *, steps: int, warmup: int = 2,
              eval_steps: int = 10, rounds: int = 1, num_classes: int = 2, data_dir: str = "",
              input_batches: int = 20, profile_dir: str = "", profile_steps: int = 3,
              profile_top: int = 10,
              torch_reference: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
  """Measures `config` and returns the results as a flat record (plus per-round lists)."""
  bench = StepBenchmark(config, num_classes)
  bench.run(warmup)
  per_round, torch_rounds = [], []
  start_usage = process_usage()
  for _ in range(rounds):
    per_round.append(bench.batch_size * steps / sum(bench.run(steps)))
    if torch_reference is not None:
      torch_rounds.append(torch_reference())
  cpu_s, system_s, page_faults = (process_usage() - start_usage) / (rounds * steps)
  train_images_per_s = float(np.median(per_round))
  results: dict[str, Any] = {
      "model": config.model.name, "image_size": config.data.image_size,
      "batch_size": bench.batch_size, "dtype": config.model.dtype,
      "platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
      "devices": jax.device_count(), "init_s": bench.init_s, "compile_s": bench.compile_s,
      "train_images_per_s": train_images_per_s, "train_images_per_s_rounds": per_round,
      "train_cpu_s_per_step": float(cpu_s), "train_system_cpu_s_per_step": float(system_s),
      "train_page_faults_per_step": float(page_faults),
      "eval_images_per_s": bench.eval_images_per_s(eval_steps),
      "peak_rss_mib": peak_rss_mib(),
      "peak_device_memory_mib": progress.peak_device_memory_mib(),
  }
  step_s = bench.batch_size / train_images_per_s
  results["gflop_per_step"] = bench.flops_per_step / 1e9
  results["achieved_gflops"] = bench.flops_per_step / step_s / 1e9
  # Peaks are per device; the steps' FLOPs, summed over the devices.
  results["matmul_peak_gflops"] = matmul_peak_gflops()
  results["fraction_of_matmul_peak"] = (
      results["achieved_gflops"] / (results["matmul_peak_gflops"] * jax.device_count()))
  peak = bf16_peak_tflops()
  results["mfu_bf16"] = (None if peak is None
                         else results["achieved_gflops"] / (peak * 1e3 * jax.device_count()))
  results["input_first_batch_s"], results["input_images_per_s"] = (
      input_pipeline_speed(config, data_dir, input_batches) if data_dir else (None, None))
  # Above 1 the pipeline outruns the steps; 2 leaves room for a busy host.
  results["input_over_train"] = (None if results["input_images_per_s"] is None
                                 else results["input_images_per_s"] / train_images_per_s)
  if profile_dir:
    results.update(_profile_results(bench.profile(profile_steps, profile_dir), step_s,
                                    profile_top))
  if torch_rounds:
    results.update(_torch_results(per_round, torch_rounds))
  return results


def _torch_results(per_round: list[float],
                   torch_rounds: list[dict[str, Any]]) -> dict[str, Any]:
  """The reference's figures beside ours: train images/s and our ratio to it per round and
  their medians, and its other figures (eval images/s, peak device memory, ...) where it
  reports them, from its last round."""
  torch_per_round = [record["train_img_per_s"] for record in torch_rounds]
  ratios = [ours / theirs for ours, theirs in zip(per_round, torch_per_round, strict=True)]
  results = dict(torch_train_images_per_s_rounds=torch_per_round,
                 torch_train_images_per_s=float(np.median(torch_per_round)),
                 ratio_to_torch_rounds=ratios, ratio_to_torch=float(np.median(ratios)))
  for key in ("eval_img_per_s", "peak_device_memory_mib", "warmup_s", "torch", "fast"):
    if key in torch_rounds[-1]:
      results[f"torch_{key}"] = torch_rounds[-1][key]
  return results


def _profile_results(ops: list[step_profile.OpTime], step_s: float,
                     top: int) -> dict[str, Any]:
  """The profile's milliseconds per step (on the average device) for the `top` costliest
  kinds of instruction and instructions, and the share of the timed step that the traced
  instructions account for: below 1 where work runs outside them (XLA:CPU's convolutions,
  timed at their launch only) or devices idle."""
  return {
      "profile_traced_fraction": sum(op.seconds for op in ops) / step_s,
      "profile_ms_by_kind": {kind: seconds * 1e3
                             for kind, seconds in step_profile.seconds_by_kind(ops, top).items()},
      "profile_top_ms": {op.name: op.seconds * 1e3 for op in ops[:top]},
  }


def format_table(results: dict[str, Any]) -> str:
  """The results as a two-column text table."""
  def show(value):
    if isinstance(value, float):
      return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, list):
      return ", ".join(show(v) for v in value)
    if isinstance(value, dict):
      return "; ".join(f"{k} {show(v)}" for k, v in value.items())
    return "-" if value is None else str(value)
  width = max(map(len, results))
  return "\n".join(f"{key:<{width}}  {show(value)}" for key, value in results.items())
