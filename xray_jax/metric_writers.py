"""Scalar metrics as JSON lines and TensorBoard events in the workdir."""

import json
import pathlib
from collections.abc import Mapping

import tensorboardX

from xray_jax import workdir as workdir_lib


def _step_of(line: str) -> int | None:
  """The step of a metrics line; None for a line cut short by a killed writer."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError):
    return None


class MetricWriter:
  """Appends `{"step": N, name: value, ...}` lines to metrics.jsonl and mirrors them to
  TensorBoard. A disabled writer (processes other than 0) writes nothing.

  A run resumed from the checkpoint of `resume_step` first drops what an interrupted run
  wrote after that step, so the steps it replays are recorded once.
  """

  def __init__(self, workdir: pathlib.Path, resume_step: int = 0, enabled: bool = True):
    self._enabled = enabled
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      path = workdir / workdir_lib.METRICS
      if path.is_file():
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if _step_of(line) is not None and _step_of(line) <= resume_step]
        workdir_lib.write_atomically(path, "".join(kept))
      self._jsonl = path.open("a")
      self._tensorboard = tensorboardX.SummaryWriter(
          str(workdir / workdir_lib.TENSORBOARD), purge_step=resume_step + 1)

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
