"""Self-supervised pretraining: NT-Xent, the two views, extra images, bad config values, an
exact resume, fine-tuning from a pretraining run, and learning on generated images."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import PIL.Image
import pytest
from helpers import (
  REPO_ROOT,
  assert_config_error,
  kill_after_saving,
  load_config_module,
  make_dataset,
  recorded_train_steps,
  tiny_config,
)

from xray_jax import (
  contrastive,
  errors,
  finetune,
  input_pipeline,
  models,
  optimizers,
  pretraining,
  train,
  trained,
)
from xray_jax.data import datasets
from xray_jax.data.splits import Splits


def pretrain_config(data_dir: pathlib.Path, **training):
  """`tiny_config` with pretrain_cpu's `pretrain` section, a small projection."""
  config = tiny_config(data_dir, **training)
  source = load_config_module(REPO_ROOT / "configs" / "pretrain_cpu.py").get_config("runlocal")
  config.pretrain = source.pretrain
  config.pretrain.projection_dim = 8
  return config


def numpy_nt_xent(z: np.ndarray, temperature: float) -> tuple[float, float]:
  """NT-Xent and top-1 written out row by row; rows 2k and 2k + 1 are positives."""
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  losses, hits = [], []
  for i in range(len(z)):
    partner = i + 1 if i % 2 == 0 else i - 1
    others = [k for k in range(len(z)) if k != i]
    similarity = {k: float(z[i] @ z[k]) / temperature for k in others}
    losses.append(np.log(sum(np.exp(s) for s in similarity.values())) - similarity[partner])
    hits.append(max(others, key=similarity.get) == partner)
  return float(np.mean(losses)), float(np.mean(hits))


@pytest.mark.parametrize("temperature", [0.1, 0.2, 1.0])
def test_nt_xent_matches_numpy(temperature):
  z = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
  z[1] = z[0] + 0.1  # One pair close together, so top-1 is neither 0 nor chance by luck.
  loss, accuracy = contrastive.nt_xent(z, temperature)
  expected_loss, expected_accuracy = numpy_nt_xent(z.astype(np.float64), temperature)
  np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
  assert float(accuracy) == pytest.approx(expected_accuracy)


def test_two_views_differ_and_batches_are_deterministic_per_seed(dataset_dir, tmp_path):
  config = pretrain_config(dataset_dir)
  records = datasets.load_splits(config.data, tmp_path).train

  def first_batch(seed):
    return next(iter(input_pipeline.create_train_dataset(
        records, config.data, 8, seed, views=pretraining.VIEWS)))["views"]

  views = first_batch(0)
  assert views.shape == (8, 2, 16, 16, 1)
  for image in views:
    assert not np.allclose(image[0], image[1])
  np.testing.assert_array_equal(views, first_batch(0))
  assert not np.allclose(views, first_batch(1))


def test_extra_images_are_added_and_held_out_images_refused(tmp_path):
  extra = make_dataset(tmp_path / "extra", per_class=3, seed=5)
  paths = sorted(str(p) for p in extra.rglob("*.*"))
  record = lambda path: {"path": path, "label": 0}
  splits = Splits(("A", "B"), train=[record(paths[0])], val=[], test=[])
  found = pretraining.extra_records(f"{extra / 'train' / 'NORMAL'}, {extra}", splits)
  assert sorted(r["path"] for r in found) == paths[1:]  # Each once, none of train again.
  for held_out in ("val", "test"):
    splits = Splits(("A", "B"), train=[], val=[], test=[])
    getattr(splits, held_out).append(record(paths[2]))
    with pytest.raises(errors.ConfigError, match=r"config\.pretrain\.extra_dirs: .* holds 1 "
                                                 "validation or test images"):
      pretraining.extra_records(str(extra), splits)


@pytest.mark.parametrize("field, value, message", [
    ("pretrain.temperature", 0.0, "config.pretrain.temperature=0.0: expected a positive"),
    ("pretrain.projection_dim", 0, "config.pretrain.projection_dim=0"),
    ("data.augment_on", "device", "config.data.augment_on='device': expected host"),
    ("pretrain.extra_dirs", "/nowhere", "config.pretrain.extra_dirs: '/nowhere' holds no"),
])
def test_bad_pretrain_values_are_one_line_errors(dataset_dir, tmp_path, field, value, message):
  assert_config_error(pretraining.pretrain, pretrain_config(dataset_dir), field, value, message,
                      tmp_path / "work")


@pytest.mark.slow
def test_resumed_pretraining_equals_an_uninterrupted_one_and_skips_validation(
    dataset_dir, tmp_path, monkeypatch):
  config = pretrain_config(dataset_dir)
  seen = []
  original_dataset = input_pipeline.create_train_dataset

  def recording(records, *args, **kwargs):
    seen.append({r["path"] for r in records})
    return original_dataset(records, *args, **kwargs)

  monkeypatch.setattr(input_pipeline, "create_train_dataset", recording)
  pretraining.pretrain(config, str(tmp_path / "straight"))

  kill_after_saving(monkeypatch, 2, lambda: pretraining.pretrain(config, str(tmp_path / "resumed")))
  pretraining.pretrain(config, str(tmp_path / "resumed"))

  straight = trained.load_variables(tmp_path / "straight")
  resumed = trained.load_variables(tmp_path / "resumed")
  assert straight[0] == resumed[0] == 4
  for a, b in zip(jax.tree.leaves(straight[1]), jax.tree.leaves(resumed[1]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (recorded_train_steps(tmp_path / "straight")
          == recorded_train_steps(tmp_path / "resumed") == [1, 2, 3, 4])

  # The validation split is the one a supervised run carves, and pretraining never saw it.
  recorded = json.loads((tmp_path / "straight" / "data_split.json").read_text())
  supervised = datasets.load_splits(config.data, tmp_path / "supervised")
  assert recorded == supervised.new_split
  assert seen[0] == {r["path"] for r in supervised.train}
  assert not seen[0] & {r["path"] for r in supervised.val}


@pytest.mark.slow
def test_fine_tuning_loads_the_backbone_exactly_and_the_head_fresh(dataset_dir, tmp_path):
  source = tmp_path / "pretrained"
  pretraining.pretrain(pretrain_config(dataset_dir), str(source))
  with pytest.raises(errors.DataError, match="pretraining run, without a classifier"):
    trained.load(source)
  _, pretrained = trained.load_variables(source)
  assert contrastive.PROJECTOR in pretrained["params"]

  config = tiny_config(dataset_dir)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  tx = optimizers.create_optimizer(config.optimizer, optax.constant_schedule(1e-3))
  fresh = train.create_train_state(models.create_model(config.model, 2), tx, (16, 16, 1), 0,
                                    mesh)
  state = finetune.load_source(fresh, str(source), mesh)
  backbone = {"Conv_0", "Conv_1", "BatchNorm_0", "BatchNorm_1"}
  for collection in ("params", "batch_stats"):
    ours, initial = getattr(state, collection), getattr(fresh, collection)
    for name in ours:
      expected = pretrained[collection][name] if name in backbone else initial[name]
      for a, b in zip(jax.tree.leaves(ours[name]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
  assert set(pretrained["params"]) == backbone | {contrastive.PROJECTOR}

  config.finetune.init_from = str(source)  # The whole fine-tuning run, too.
  assert "val/auc" in train.train_and_evaluate(config, str(tmp_path / "tuned"))

  config.data.split_seed = 1  # Another validation split: some of it was pretrained on.
  with pytest.raises(errors.ConfigError, match=r"pretrained on \d+ of this run's validation"):
    train.train_and_evaluate(config, str(tmp_path / "leaky"))


def write_smooth_images(root: pathlib.Path, per_class: int = 24) -> pathlib.Path:
  """ROOT/train/{NORMAL,PNEUMONIA}/*.png: 32x32 images, each a random 4x4 pattern upsampled,
  so that every image has its own shape for its two views to share."""
  rng = np.random.default_rng(0)
  for name in ("NORMAL", "PNEUMONIA"):
    for i in range(per_class):
      coarse = PIL.Image.fromarray(rng.uniform(0, 255, size=(4, 4)).astype(np.float32), mode="F")
      pixels = np.asarray(coarse.resize((32, 32), PIL.Image.Resampling.BICUBIC))
      path = root / "train" / name / f"img{i:03d}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
  return root


@pytest.mark.slow
def test_contrastive_accuracy_rises_well_above_chance(tmp_path):
  config = pretrain_config(write_smooth_images(tmp_path / "data"), num_train_steps=50,
                           checkpoint_every_steps=50, global_batch_size=16)
  config.model.widths = (8, 16)
  config.optimizer.learning_rate = 3e-3
  workdir = tmp_path / "work"
  pretraining.pretrain(config, str(workdir))
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  accuracy = [m["train/accuracy"] for m in lines if "train/accuracy" in m]
  chance = 1 / (2 * config.training.global_batch_size - 1)
  assert np.mean(accuracy[-10:]) > 4 * chance, accuracy


def test_the_binary_prints_its_config_with_a_comment_for_every_pretrain_field():
  result = subprocess.run(
      [sys.executable, "-m", "xray_jax.pretrain", "--config=configs/pretrain_cpu.py",
       "--print_config"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  fields = [line for line in result.stdout.splitlines() if line.startswith("pretrain.")]
  assert len(fields) == 4 and all("  # " in line for line in fields), fields
  assert "pretrain.temperature = 0.2  # NT-Xent" in result.stdout
