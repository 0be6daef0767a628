"""metrics.jsonl and the TensorBoard event files, read back by TensorBoard itself."""

import json

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from xray_jax import event_files
from xray_jax import workdir as workdir_lib
from xray_jax.metric_writers import MetricWriter


def _tensorboard_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} as TensorBoard shows the run in `workdir`."""
  run = event_accumulator.EventAccumulator(str(workdir / workdir_lib.TENSORBOARD))
  run.Reload()
  return {tag: [(e.step, e.value) for e in run.Scalars(tag)] for tag in run.Tags()["scalars"]}


def _write(writer: MetricWriter, steps: range, offset: float) -> None:
  for step in steps:
    writer.write(step, {"train/loss": offset + 1 / step, "val/accuracy": offset + step / 100})


def test_tensorboard_reads_each_scalar_at_its_step(tmp_path):
  writer = MetricWriter(tmp_path)
  _write(writer, range(1, 6), offset=0.0)
  writer.close()

  scalars = _tensorboard_scalars(tmp_path)
  assert sorted(scalars) == ["train/loss", "val/accuracy"]
  assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]],
                             [1 / s for s in range(1, 6)], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars["val/accuracy"]],
                             [s / 100 for s in range(1, 6)], rtol=1e-6)


def test_resumed_run_replaces_the_steps_after_its_checkpoint_in_both_records(tmp_path):
  first = MetricWriter(tmp_path)
  _write(first, range(1, 11), offset=0.0)  # Interrupted at step 10,
  first.close()
  resumed = MetricWriter(tmp_path, resume_step=5)  # resumed from the checkpoint of step 5.
  _write(resumed, range(6, 9), offset=1.0)
  resumed.close()

  expected = [(s, 1 / s) for s in range(1, 6)] + [(s, 1 + 1 / s) for s in range(6, 9)]
  shown = _tensorboard_scalars(tmp_path)["train/loss"]
  assert [s for s, _ in shown] == [s for s, _ in expected]
  np.testing.assert_allclose([v for _, v in shown], [v for _, v in expected], rtol=1e-6)
  lines = [json.loads(line) for line in (tmp_path / workdir_lib.METRICS).read_text().splitlines()]
  assert [line["step"] for line in lines] == [s for s, _ in expected]
  assert [line["train/loss"] for line in lines] == [v for _, v in expected]


def test_event_files_of_one_directory_sort_in_creation_order(tmp_path):
  paths = []
  for _ in range(3):
    events = event_files.EventFile(tmp_path, purge_step=1)
    events.close()
    paths.append(events.path)
  assert sorted(paths) == paths and len(set(paths)) == 3
