"""Damaged checkpoints are found before they are used: flipped bytes, truncated or missing
files get an error naming the checkpoint, training can fall back to an intact one, and
evaluation refuses non-finite predictions."""

import pathlib
import shutil

import jax
import numpy as np
import pytest
from helpers import tiny_config

from xray_jax import checkpointing, errors, train, trained
from xray_jax import workdir as workdir_lib
from xray_jax.evaluators import evaluation

pytestmark = pytest.mark.slow


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in step_dir.glob("state/**/d/*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _flip_bytes(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
  path.write_bytes(bytes(data))


def _truncate(path: pathlib.Path) -> None:
  path.write_bytes(path.read_bytes()[:100])


DAMAGE = {
    "flipped": (lambda d: _flip_bytes(_largest_data_file(d)), "differs from what was written"),
    "truncated": (lambda d: _truncate(_largest_data_file(d)),
                  r"has 100 bytes, \d+ were written \(truncated"),
    "no metadata": (lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
                    "_CHECKPOINT_METADATA is missing"),
    "no manifest": (lambda d: (d / "state" / "manifest.ocdbt").unlink(),
                    "state/manifest.ocdbt is missing"),
}


@pytest.fixture
def workdir(trained_workdir, tmp_path) -> pathlib.Path:
  copy = tmp_path / "work"
  shutil.copytree(trained_workdir, copy)
  return copy


def test_every_kept_checkpoint_has_matching_digests(trained_workdir):
  steps = sorted(int(p.name) for p in (trained_workdir / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [2, 4, 6]
  for step in steps:
    step_dir = trained_workdir / "checkpoints" / str(step)
    assert checkpointing.has_digests(step_dir)
    assert checkpointing.digest_problems(step_dir) == []


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_is_named_with_what_is_wrong(workdir, damage):
  harm, message = DAMAGE[damage]
  harm(workdir / "checkpoints" / "6")
  with pytest.raises(errors.CheckpointError, match=rf"checkpoints/6 is damaged: .*{message}"):
    trained.load(workdir, "latest")
  assert trained.load(workdir, 4).step == 4  # The others still load.


def test_training_falls_back_to_the_newest_intact_checkpoint(trained_workdir, workdir):
  harm, _ = DAMAGE["flipped"]
  harm(workdir / "checkpoints" / "6")
  config = tiny_config(trained_workdir.parent / "data", num_train_steps=6, keep_checkpoints=5)
  config.training.restore_fallback = False
  with pytest.raises(errors.CheckpointError, match=r"checkpoints/6 is damaged"):
    train.train_and_evaluate(config, str(workdir))
  assert (workdir / "checkpoints" / "6").is_dir()  # Refusing changes nothing.

  config.training.restore_fallback = True
  train.train_and_evaluate(config, str(workdir))
  set_aside = list((workdir / workdir_lib.DAMAGED_CHECKPOINTS).iterdir())
  assert [p.name.split("_")[0] for p in set_aside] == ["6"]  # Kept for inspection.
  # Steps 5 and 6 were trained again from step 4: the same parameters as before the damage.
  again, original = trained.load(workdir, 6), trained.load(trained_workdir, 6)
  for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(original.variables),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluation_refuses_non_finite_predictions(workdir, monkeypatch):
  load = trained.load

  def diverged(*args, **kwargs):
    run = load(*args, **kwargs)
    params = jax.tree.map(lambda x: x * np.nan, run.variables["params"])
    return trained.TrainedRun(run.workdir, run.config, run.class_names, run.model, run.step,
                              {**run.variables, "params": params})

  monkeypatch.setattr(trained, "load", diverged)
  with pytest.raises(errors.CheckpointError, match="non-finite probabilities for 12 of 12"):
    evaluation.evaluate_checkpoint(workdir, "val", 6, tiny_config(workdir).evaluation)
  assert not evaluation.report_path(workdir, "val", 6).exists()
