"""The jit-compiled train step: it learns, and sharding does not change its result."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from xray_jax import losses, models, optimizers, sharding, train
from xray_jax.data import folder
from xray_jax.input_pipeline import Preprocess


def _fixed_batch(dataset_dir, count=16):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]
  chosen = [records[i] for i in np.random.default_rng(0).permutation(len(records))[:count]]
  preprocess = Preprocess(image_size=16, grayscale=True, mean=0.5, std=0.25)
  examples = [preprocess(r) for r in chosen]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


SMOOTHED_CROSS_ENTROPY = losses.mean_loss(losses.cross_entropy, label_smoothing=0.05)


def _state_and_step(mesh, learning_rate=3e-3, loss=SMOOTHED_CROSS_ENTROPY):
  model = models.create_model(ml_collections.ConfigDict(dict(
      name="cnn", dtype="float32", widths=(8, 16), dense=(16,), dropout=0.2)), 2)
  schedule = optax.constant_schedule(learning_rate)
  opt_config = ml_collections.ConfigDict(dict(
      name="adamw", weight_decay=1e-4, grad_clip_norm=1.0))
  tx = optimizers.create_optimizer(opt_config, schedule)
  state = train.create_train_state(model, tx, (16, 16, 1), seed=0, mesh=mesh)
  return state, train.make_train_step(mesh, schedule=schedule, loss=loss)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_train_step_lowers_the_loss_on_a_fixed_batch(dataset_dir, name):
  mesh = sharding.make_mesh()
  loss_config = ml_collections.ConfigDict(dict(
      name=name, focal_gamma=2.0, label_smoothing=0.05, class_weights="none"))
  state, step = _state_and_step(mesh, loss=losses.create_loss(loss_config, np.array([0, 1]), 2))
  batch = sharding.to_global_batch(_fixed_batch(dataset_dir), mesh)
  seen = []
  for _ in range(25):
    state, metrics = step(state, batch)
    seen.append(float(metrics["loss"]))
  assert int(state.step) == 25
  assert seen[-1] < 0.5 * seen[0], seen


def test_sharded_step_matches_single_device(dataset_dir):
  host_batch = _fixed_batch(dataset_dir)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    state, step = _state_and_step(mesh)
    for _ in range(3):
      state, metrics = step(state, sharding.to_global_batch(host_batch, mesh))
    assert len(state.params["Dense_0"]["kernel"].sharding.device_set) == len(devices)
    results.append((jax.device_get(state.params), jax.device_get(state.batch_stats),
                    float(metrics["loss"])))
  (params1, stats1, loss1), (params8, stats8, loss8) = results
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((params1, stats1)), jax.tree.leaves((params8, stats8)),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_moving_average_follows_the_weights_with_a_ramped_decay(dataset_dir):
  mesh = sharding.make_mesh()
  state, _ = _state_and_step(mesh)
  assert state.ema == {}  # Not kept unless asked for.
  model = models.create_model(ml_collections.ConfigDict(dict(
      name="cnn", dtype="float32", widths=(8, 16), dense=(16,), dropout=0.2)), 2)
  schedule = optax.constant_schedule(3e-3)
  tx = optimizers.create_optimizer(ml_collections.ConfigDict(dict(
      name="adamw", weight_decay=1e-4, grad_clip_norm=1.0)), schedule)
  state = train.create_train_state(model, tx, (16, 16, 1), seed=0, mesh=mesh, ema=True)
  step = train.make_train_step(mesh, schedule=schedule,
                               loss=losses.mean_loss(losses.cross_entropy), ema_decay=0.99)
  batch = sharding.to_global_batch(_fixed_batch(dataset_dir), mesh)
  kernel = lambda tree: np.asarray(jax.device_get(tree["Dense_0"]["kernel"]))
  seen = [kernel(state.params)]
  for _ in range(2):
    state, _ = step(state, batch)
    seen.append(kernel(state.params))
  # After step t the average moves with rate (1 + t) / (10 + t) while that is below 0.99.
  rate1, rate2 = 2 / 11, 3 / 12
  expected = rate2 * (rate1 * seen[0] + (1 - rate1) * seen[1]) + (1 - rate2) * seen[2]
  np.testing.assert_allclose(kernel(state.ema["params"]), expected, rtol=1e-5, atol=1e-7)
  assert not np.allclose(kernel(state.ema["params"]), seen[2])
  late = train.update_ema({"w": np.float32(1.0)}, {"w": np.float32(0.0)}, 0.99, 10**6)
  np.testing.assert_allclose(late["w"], 0.99, rtol=1e-6)


def test_mixup_blends_images_and_losses_with_one_beta_weight(dataset_dir):
  mesh = sharding.make_mesh()
  state, _ = _state_and_step(mesh)
  schedule = optax.constant_schedule(3e-3)
  batch = sharding.to_global_batch(_fixed_batch(dataset_dir), mesh)
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  mix = jax.random.beta(jax.random.fold_in(dropout_rng, 1), 0.4, 0.4)
  mixed = mix * batch["image"] + (1 - mix) * batch["image"][::-1]
  logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, mixed,
                             train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
  loss = SMOOTHED_CROSS_ENTROPY
  expected = (mix * loss(logits, batch["label"])
              + (1 - mix) * loss(logits, batch["label"][::-1]))
  step = train.make_train_step(mesh, schedule=schedule, loss=loss, mixup_alpha=0.4)
  _, metrics = step(state, batch)
  assert 0.0 < float(mix) < 1.0
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
  plain_state, plain_step = _state_and_step(mesh)
  _, plain = plain_step(plain_state, batch)
  assert abs(float(plain["loss"]) - float(expected)) > 1e-3
