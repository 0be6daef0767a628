"""Scalar metrics as JSON lines and TensorBoard events in the workdir."""

import json
import pathlib
from collections.abc import Mapping

import tensorboardX

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends `{"step": N, name: value, ...}` lines to metrics.jsonl and mirrors them to
  TensorBoard. A disabled writer (processes other than 0) writes nothing."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self._enabled = enabled
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = (workdir / METRICS_FILE).open("a")
      self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()
