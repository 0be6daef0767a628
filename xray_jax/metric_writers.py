"""Scalar metrics as JSON lines and TensorBoard events in the workdir."""

import json
import pathlib
from collections.abc import Mapping

from xray_jax import event_files, storage
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
  wrote after that step, so the steps it replays are recorded once (TensorBoard hides the
  earlier events of those steps).
  """

  def __init__(self, workdir: pathlib.Path, resume_step: int = 0, enabled: bool = True):
    self._enabled = enabled
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      self._path = workdir / workdir_lib.METRICS
      if self._path.is_file():
        kept = [line for line in self._path.read_text().splitlines(keepends=True)
                if _step_of(line) is not None and _step_of(line) <= resume_step]
        workdir_lib.write_atomically(self._path, "".join(kept))
      with storage.writing(self._path):
        self._jsonl = self._path.open("a")
      tensorboard_dir = workdir / workdir_lib.TENSORBOARD
      with storage.writing(tensorboard_dir):
        self._tensorboard = event_files.EventFile(tensorboard_dir, purge_step=resume_step + 1)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes the metrics of `step`; a full or read-only filesystem raises WriteError (a
    line cut short is dropped when the run resumes)."""
    if not self._enabled:
      return
    with storage.writing(self._path, f"the metrics of step {step}"):
      self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self._jsonl.flush()
    with storage.writing(self._tensorboard.path, f"the metrics of step {step}"):
      self._tensorboard.write(step, scalars)

  def close(self) -> None:
    if self._enabled:
      self._tensorboard.close()
      with storage.writing(self._path, "the metrics"):
        self._jsonl.close()
