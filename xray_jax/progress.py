"""Training progress for the person watching: a bar with ETA when stdout is a terminal,
plain log lines (images/s, ETA) when it is not, and a summary with what to run next."""

import pathlib
import sys
import time
from collections.abc import Mapping

import jax
import tqdm
from absl import logging

from xray_jax import workdir as workdir_lib


def peak_device_memory_mib() -> float | None:
  """Peak memory in use on the first local device, where the backend reports it (GPU, TPU;
  not the CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


class TrainingProgress:
  """Call `advance` after every step and `report` with the train metrics of each logging
  interval; `restart_clock` after validation or a save keeps them out of images/s."""

  def __init__(self, start_step: int, total_steps: int, steps_per_epoch: int,
               global_batch_size: int, enabled: bool = True):
    self._total, self._steps_per_epoch = total_steps, steps_per_epoch
    self._batch_size = global_batch_size
    self._bar = None
    if enabled and sys.stdout.isatty():
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, file=sys.stdout, desc="training")
    self._interval_step, self._interval_start = start_step, time.perf_counter()
    self._evaluated: dict[str, str] = {}  # The AUC of each set at the last evaluation.

  def advance(self) -> None:
    if self._bar is not None:
      self._bar.update(1)

  def report(self, step: int, metrics: Mapping[str, float]) -> float:
    """Shows the interval's metrics; returns its training images/s."""
    elapsed = time.perf_counter() - self._interval_start
    images_per_s = (step - self._interval_step) * self._batch_size / elapsed
    eta = (self._total - step) * elapsed / (step - self._interval_step)
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", accuracy=f"{metrics['accuracy']:.3f}",
                            images_per_s=f"{images_per_s:.1f}", **self._evaluated,
                            refresh=False)
    else:
      logging.info("step %d/%d epoch %.2f: loss %.4f, accuracy %.3f, lr %.2e, %.1f images/s, "
                   "ETA %s", step, self._total, step / self._steps_per_epoch, metrics["loss"],
                   metrics["accuracy"], metrics["learning_rate"], images_per_s,
                   format_duration(eta))
    self._interval_step = step
    self.restart_clock()
    return images_per_s

  def show_evaluation(self, step: int, results: Mapping[str, Mapping[str, float]]) -> None:
    """Logs the figures of each evaluated set (validation and the named ones), and keeps
    their AUCs on the bar."""
    for name, found in results.items():
      logging.info("step %d %s: NLL %.4f, accuracy %.4f, AUC %.4f", step,
                   "validation" if name == "val" else name, found["nll"], found["accuracy"],
                   found["auc"])
    self._evaluated = {f"{name}_auc": f"{found['auc']:.3f}" for name, found in results.items()}

  def restart_clock(self) -> None:
    self._interval_start = time.perf_counter()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def log_summary(workdir: pathlib.Path, last_step: int, best_step: int | None,
                best_metrics: Mapping[str, float] | None, best_metric: str) -> None:
  """Where the run stands and what to run next."""
  key = best_metric.removeprefix("val/")
  logging.info(
      "Finished at step %d. Best checkpoint: %s. Checkpoints: %s. Next:\n"
      "  python -m xray_jax.evaluate --workdir=%s --checkpoint=best --split=val\n"
      "  python -m xray_jax.predict --workdir=%s --checkpoint=best IMAGES_OR_FOLDERS",
      last_step, "none validated yet" if best_metrics is None else
      f"step {best_step} by {best_metric} {best_metrics[key]:.4f} (validation AUC "
      f"{best_metrics['auc']:.4f}, accuracy {best_metrics['accuracy']:.4f})",
      workdir / workdir_lib.CHECKPOINTS, workdir, workdir)
