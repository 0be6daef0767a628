"""Grad-CAM points at the evidence: a bright blob that defines the class."""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from xray_jax import gradcam, models, optimizers, sharding, train


def blob_batch(rng: np.random.Generator, count: int, size: int = 32):
  """Noise images; class 1 carries a bright 6x6 blob at a random place."""
  images = rng.normal(0, 0.3, size=(count, size, size, 1)).astype(np.float32)
  labels = rng.integers(0, 2, count).astype(np.int32)
  centres = rng.integers(5, size - 5, size=(count, 2))
  for image, label, (row, col) in zip(images, labels, centres, strict=True):
    if label:
      image[row - 3:row + 3, col - 3:col + 3] += 2.5
  return {"image": images, "label": labels}, centres


@pytest.mark.parametrize("name, fields", [
    ("cnn", dict(widths=(8, 16), dense=(16,), dropout=0.0)),
    ("resnet18", dict(width=8, dropout=0.0)),
])
def test_heat_map_peaks_inside_the_blob(name, fields):
  mesh = sharding.make_mesh()
  model = models.create_model(
      ml_collections.ConfigDict(dict(name=name, dtype="float32", **fields)), 2)
  schedule = optax.constant_schedule(3e-3)
  tx = optimizers.create_optimizer(ml_collections.ConfigDict(dict(
      name="adam", weight_decay=0.0, grad_clip_norm=0.0)), schedule)
  state = train.create_train_state(model, tx, (32, 32, 1), seed=0, mesh=mesh)
  step = train.make_train_step(mesh, schedule)
  rng = np.random.default_rng(0)
  for _ in range(60):
    batch, _ = blob_batch(rng, 32)
    state, metrics = step(state, sharding.to_global_batch(batch, mesh))
  assert float(metrics["accuracy"]) > 0.9

  batch, centres = blob_batch(np.random.default_rng(1), 64)
  positive = batch["label"] == 1
  images, centres = batch["image"][positive], centres[positive]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  heat = np.asarray(gradcam.grad_cam(model, variables, jax.numpy.asarray(images),
                                     jax.numpy.ones(len(images), jax.numpy.int32)))
  assert heat.shape == images.shape[:3]
  assert heat.min() >= 0 and heat.max() <= 1
  peaks = np.stack(np.unravel_index(heat.reshape(len(heat), -1).argmax(1), heat.shape[1:]), 1)
  inside = np.all(np.abs(peaks - centres) <= 5, axis=1)  # Blob half-width 3, map stride.
  assert inside.mean() >= 0.7, inside.mean()


def test_overlay_colours_the_hot_region():
  gray = np.full((8, 8), 0.5)
  heat = np.zeros((8, 8))
  heat[2, 3] = 1.0
  picture = gradcam.overlay(gray, heat)
  assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8
  assert picture[2, 3, 0] > picture[2, 3, 2]  # Hot is red in jet ...
  assert picture[0, 0, 2] > picture[0, 0, 0]  # ... cold is blue.
