"""The training loop on generated data: checkpoints, resume, divergence and bad input."""

import json
import pathlib

import jax
import numpy as np
import pytest
from helpers import assert_config_error, kill_after_saving, make_dataset, tiny_config

from xray_jax import checkpointing, errors, inference, models, optimizers, sharding, train, trained
from xray_jax.data import datasets
from xray_jax.evaluators import evaluation

pytestmark = pytest.mark.slow


def restore_state(config, workdir: pathlib.Path, mesh: jax.sharding.Mesh, step=None):
  """The train state saved in `workdir`, restored onto `mesh`."""
  model = models.create_model(config.model, 2)
  schedule = optimizers.create_learning_rate_schedule(config.optimizer, 10, 100)
  tx = optimizers.create_optimizer(config.optimizer, schedule)
  size = config.data.image_size
  template = train.create_train_state(model, tx, (size, size, 1), config.seed, mesh,
                                      ema=config.training.ema_decay > 0)
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", 3)
  try:
    return checkpointer.restore(step or checkpointer.latest_step(), template)
  finally:
    checkpointer.close()


def _record_train_batches(monkeypatch) -> list[bytes]:
  seen = []
  original = sharding.to_global_batch

  def recording(batch, mesh):
    if "mask" not in batch:  # Train batches; eval batches carry a mask.
      seen.append(batch["image"].tobytes() + batch["label"].tobytes())
    return original(batch, mesh)

  monkeypatch.setattr(sharding, "to_global_batch", recording)
  return seen


def test_resume_gives_the_same_params_and_batches(dataset_dir, tmp_path, monkeypatch):
  config = tiny_config(dataset_dir)
  seen_straight = _record_train_batches(monkeypatch)
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  monkeypatch.undo()

  seen_resumed = _record_train_batches(monkeypatch)
  kill_after_saving(monkeypatch, 2,
                    lambda: train.train_and_evaluate(config, str(tmp_path / "resumed")))
  assert len(seen_resumed) == 2
  train.train_and_evaluate(config, str(tmp_path / "resumed"))

  assert seen_resumed == seen_straight and len(seen_straight) == 4
  mesh = sharding.make_mesh()
  straight = restore_state(config, tmp_path / "straight", mesh)
  resumed = restore_state(config, tmp_path / "resumed", mesh)
  assert int(straight.step) == int(resumed.step) == 4
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_workdir_contents_and_restore_on_one_device(dataset_dir, tmp_path, monkeypatch):
  config = tiny_config(dataset_dir, num_train_steps=6, keep_checkpoints=1)
  monkeypatch.chdir(dataset_dir.parent)
  config.data.dir = dataset_dir.name  # Relative: config.json must hold it absolute.
  workdir = tmp_path / "work"
  final = train.train_and_evaluate(config, str(workdir))
  assert set(final) >= {"val/accuracy", "val/auc", "val/nll"}
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["dir"] == str(dataset_dir)
  assert config.data.dir == dataset_dir.name  # The caller's config is left as it was.
  assert json.loads((workdir / "classes.json").read_text()) == ["NORMAL", "PNEUMONIA"]
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines if "train/loss" in m] == [1, 2, 3, 4, 5, 6]
  assert [m["step"] for m in lines if "val/auc" in m] == [2, 4, 6]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  # The latest is kept, plus one with the best validation AUC (ties: the later one), and
  # the best before step 6 until the next save (step 6 was validated after its save).
  auc = {m["step"]: m["val/auc"] for m in lines if "val/auc" in m}
  best = max(auc, key=lambda step: (auc[step], step))
  best_before = max((s for s in auc if s < 6), key=lambda step: (auc[step], step))
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == sorted({6, best, best_before})
  assert checkpointing.Checkpointer(workdir / "checkpoints", read_only=True).best_step() == best

  # Saved from 8 devices, restored onto 1.
  on_eight = restore_state(config, workdir, sharding.make_mesh())
  on_one = restore_state(config, workdir, sharding.make_mesh(jax.devices()[:1]))
  assert on_one.params["Dense_0"]["kernel"].sharding.device_set == {jax.devices()[0]}
  for a, b in zip(jax.tree.leaves(on_eight), jax.tree.leaves(on_one), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_moving_average_is_checkpointed_and_used_for_validation_and_inference(
    dataset_dir, tmp_path):
  config = tiny_config(dataset_dir, ema_decay=0.9)
  workdir = tmp_path / "work"
  final = train.train_and_evaluate(config, str(workdir))
  mesh = sharding.make_mesh()
  state = restore_state(config, workdir, mesh)
  assert set(state.ema) == {"params", "batch_stats"}
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  assert not all(np.allclose(a, b) for a, b in zip(leaves(state.ema["params"]),
                                                    leaves(state.params), strict=True))
  run = trained.load(workdir, "latest", mesh)
  for a, b in zip(leaves(run.variables), leaves(state.ema), strict=True):
    np.testing.assert_array_equal(a, b)
  splits = datasets.load_splits(config.data, workdir)
  evaluator = inference.Evaluator(run.model, splits.val, config.data, 16, mesh)
  assert evaluator.evaluate(run.variables)["auc"] == pytest.approx(final["val/auc"])


def test_divergence_stops_training_and_keeps_checkpoints(dataset_dir, tmp_path):
  workdir = tmp_path / "work"
  train.train_and_evaluate(tiny_config(dataset_dir, num_train_steps=2), str(workdir))
  config = tiny_config(dataset_dir, num_train_steps=8)
  config.optimizer.learning_rate = 1e38  # Adam steps of ~1e38 overflow the weights.
  with pytest.raises(errors.TrainingDivergedError, match="loss=(nan|inf)"):
    train.train_and_evaluate(config, str(workdir))
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [2]
  state = restore_state(config, workdir, sharding.make_mesh())
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_resuming_with_a_different_optimizer_is_reported(dataset_dir, tmp_path):
  workdir = tmp_path / "work"
  train.train_and_evaluate(tiny_config(dataset_dir, num_train_steps=2), str(workdir))
  config = tiny_config(dataset_dir, num_train_steps=4)
  config.optimizer.name = "sgd"
  with pytest.raises(errors.CheckpointError, match=r"checkpoints/2 does not fit"):
    train.train_and_evaluate(config, str(workdir))
  assert (workdir / "checkpoints" / "2" / "state").is_dir()


def test_unreadable_images_are_all_reported_before_training(dataset_dir, tmp_path):
  broken = [dataset_dir / "train" / "PNEUMONIA" / "zz_broken.png",
            dataset_dir / "train" / "NORMAL" / "zz_empty.jpeg"]
  broken[0].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  broken[1].write_bytes(b"")
  config = tiny_config(dataset_dir, num_train_steps=4)
  with pytest.raises(errors.DataError) as e:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert str(e.value).startswith("2 images cannot be read")
  for path in broken:  # Each one named, wherever the split put it.
    assert f"{path}: cannot read image" in str(e.value)
  assert not (tmp_path / "work" / "checkpoints").exists()

  config.data.check_images = "skip"
  workdir = tmp_path / "skipping"
  train.train_and_evaluate(config, str(workdir))
  assert (workdir / "checkpoints" / "4").is_dir()


def test_checkpoint_is_saved_before_validation_and_best_is_among_validated(
    dataset_dir, tmp_path, monkeypatch):
  config = tiny_config(dataset_dir, num_train_steps=6, checkpoint_every_steps=1,
                       keep_checkpoints=1)
  workdir = tmp_path / "work"
  train.train_and_evaluate(config, str(workdir))
  validated = json.loads((workdir / "checkpoints" / checkpointing.VALIDATION_FILE).read_text())
  assert sorted(int(s) for s in validated) == [2, 4, 6]
  auc = {int(s): m["auc"] for s, m in validated.items()}
  best_before = max((2, 4), key=lambda step: (auc[step], step))
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == sorted({6, best_before})  # Steps saved without validation are never "best".

  original = train.inference_variables  # What each validation evaluates.
  calls = []

  def fails_the_second_time(state):
    calls.append(int(state.step))
    if len(calls) == 2:
      raise RuntimeError("validation failed")
    return original(state)

  monkeypatch.setattr(train, "inference_variables", fails_the_second_time)
  failing = tmp_path / "failing"
  with pytest.raises(RuntimeError, match="validation failed"):
    train.train_and_evaluate(tiny_config(dataset_dir, num_train_steps=6), str(failing))
  assert calls == [2, 4]
  assert (failing / "checkpoints" / "4").is_dir()  # The training of steps 3-4 is kept.


def test_batch_not_divisible_by_devices_is_reported(dataset_dir, tmp_path):
  with pytest.raises(errors.ConfigError, match="training.global_batch_size=12.*8 devices"):
    train.train_and_evaluate(tiny_config(dataset_dir, global_batch_size=12), str(tmp_path))


def test_named_sets_are_evaluated_recorded_and_can_choose_the_best(dataset_dir, tmp_path):
  external = make_dataset(tmp_path / "external", per_class=6, seed=3) / "train"
  config = tiny_config(dataset_dir, num_train_steps=6, keep_checkpoints=1,
                       best_metric="external/nll")
  config.data.eval_sets = f"external={external}"
  workdir = tmp_path / "work"
  final = train.train_and_evaluate(config, str(workdir))
  assert {"val/auc", "external/auc", "external/nll", "external/accuracy"} <= set(final)
  assert final["external/num_examples"] == 12
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  evaluated = {m["step"]: m for m in lines if "external/nll" in m}
  assert sorted(evaluated) == [2, 4, 6] and all("val/auc" in m for m in evaluated.values())
  # The best checkpoint is the one with the lowest external NLL, and kept beside the latest.
  best = min(evaluated, key=lambda s: (evaluated[s]["external/nll"], -s))
  assert trained.resolve_step(checkpointing.Checkpointer(
      workdir / "checkpoints", read_only=True, best_metric="external/nll"), "best") == best
  assert trained.load(workdir, "best").step == best
  # The evaluation job evaluates the named set with the run's threshold.
  report = evaluation.evaluate_checkpoint(workdir, "external", "latest",
                                          trained.load_config(workdir).evaluation)
  assert report["at_0.5"]["num_examples"] == 12
  assert report["at_0.5"]["accuracy"] == pytest.approx(final["external/accuracy"])


@pytest.mark.parametrize("field, value, message", [
    ("data.eval_sets", "val=test", "config.data.eval_sets='val=test': 'val' is taken"),
    ("data.eval_sets", "external", "expected NAME=test or NAME=FOLDER"),
    ("training.best_metric", "external/auc", "training.best_metric='external/auc'"),
    ("training.best_metric", "val/f1", "training.best_metric='val/f1'"),
])
def test_bad_named_sets_are_one_line_errors(dataset_dir, tmp_path, field, value, message):
  assert_config_error(train.train_and_evaluate, tiny_config(dataset_dir), field, value, message,
                      tmp_path / "work")


def test_a_named_test_set_needs_a_test_split(dataset_dir, tmp_path):
  config = tiny_config(dataset_dir)
  config.data.eval_sets = "external=test"
  with pytest.raises(errors.DataError, match="external=test, but the data source has no test"):
    train.train_and_evaluate(config, str(tmp_path / "work"))
