"""Grad-CAM points at the evidence: a bright blob that defines the class."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from xray_jax import losses, models, optimizers, sharding, train
from xray_jax.evaluators import gradcam


def blob_batch(rng: np.random.Generator, count: int, size: int = 32):
  """Noise images; class 1 carries a bright 6x6 blob at a random place."""
  images = rng.normal(0, 0.3, size=(count, size, size, 1)).astype(np.float32)
  labels = rng.integers(0, 2, count).astype(np.int32)
  centres = rng.integers(5, size - 5, size=(count, 2))
  for image, label, (row, col) in zip(images, labels, centres, strict=True):
    if label:
      image[row - 3:row + 3, col - 3:col + 3] += 2.5
  return {"image": images, "label": labels}, centres


@pytest.mark.parametrize("name, fields, size", [
    ("cnn", dict(widths=(8, 16), dense=(16,), dropout=0.0), 32),  # 16x16 feature map.
    ("resnet18", dict(width=8, dropout=0.0), 64),  # 2x2 feature map: coarse by design.
])
def test_heat_map_is_hot_on_the_blob(name, fields, size):
  mesh = sharding.make_mesh()
  model = models.create_model(
      ml_collections.ConfigDict(dict(name=name, dtype="float32", **fields)), 2)
  schedule = optax.constant_schedule(3e-3)
  tx = optimizers.create_optimizer(ml_collections.ConfigDict(dict(
      name="adam", weight_decay=0.0, grad_clip_norm=0.0)), schedule)
  state = train.create_train_state(model, tx, (size, size, 1), seed=0, mesh=mesh)
  step = train.make_train_step(mesh, schedule=schedule,
                               loss=losses.mean_loss(losses.cross_entropy))
  rng = np.random.default_rng(0)
  for _ in range(60):
    batch, _ = blob_batch(rng, 32, size)
    state, metrics = step(state, sharding.to_global_batch(batch, mesh))
  assert float(metrics["accuracy"]) > 0.9

  batch, centres = blob_batch(np.random.default_rng(1), 64, size)
  positive = batch["label"] == 1
  images, centres = batch["image"][positive], centres[positive]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  heat = np.asarray(gradcam.grad_cam(model, variables, jax.numpy.asarray(images),
                                     jax.numpy.ones(len(images), jax.numpy.int32)))
  assert heat.shape == images.shape[:3]
  assert heat.min() >= 0 and heat.max() <= 1
  on_blob = heat[np.arange(len(heat)), centres[:, 0], centres[:, 1]]
  mirrored = heat[np.arange(len(heat)), size - 1 - centres[:, 0], size - 1 - centres[:, 1]]
  assert np.mean(on_blob >= 0.6) >= 0.75, on_blob
  assert np.mean(on_blob > mirrored) >= 0.8  # Hotter than the point opposite the centre.
  if name == "cnn":  # A fine map peaks on the blob itself.
    peaks = np.stack(np.unravel_index(heat.reshape(len(heat), -1).argmax(1), heat.shape[1:]),
                     1)
    assert np.mean(np.all(np.abs(peaks - centres) <= 4, axis=1)) >= 0.7


def test_overlay_colours_the_hot_region():
  gray = np.full((8, 8), 0.5)
  heat = np.zeros((8, 8))
  heat[2, 3] = 1.0
  picture = gradcam.overlay(gray, heat)
  assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8
  assert picture[2, 3, 0] > picture[2, 3, 2]  # Hot is red in jet ...
  assert picture[0, 0, 2] > picture[0, 0, 0]  # ... cold is blue.
