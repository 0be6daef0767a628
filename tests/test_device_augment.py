"""Augmentation inside the train step (data.augment_on=device) against the host's PIL and
skimage transforms, and in a whole train step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import pytest
import skimage.filters
from helpers import SMALL_MODELS, no_augment

from xray_jax import losses, models, optimizers, sharding, train
from xray_jax.data import augment, device_augment

SIZE = 24


def _pattern(size: int = SIZE) -> np.ndarray:
  rows, cols = np.mgrid[0:size, 0:size]
  return (0.5 + 0.4 * np.sin(cols / 3.0) * np.cos(rows / 4.0)).astype(np.float32)


def _whole_image() -> tuple[float, ...]:
  return (0.0, 0.0, float(SIZE), float(SIZE))


@pytest.mark.parametrize("angle, scale, shift_x, shift_y, stretch", [
    (7.0, 1.08, 3.0, -2.0, 1.0), (-10.0, 0.9, -1.5, 2.5, 1.0), (90.0, 1.0, 0.0, 0.0, 1.0),
    (12.0, 1.05, 1.0, -2.0, 1.2), (-5.0, 0.95, 0.0, 1.5, 0.85)])
def test_warp_reads_the_image_as_pils_affine_transform(angle, scale, shift_x, shift_y,
                                                        stretch):
  image = _pattern()
  expected = PIL.Image.fromarray(image, mode="F").transform(
      (SIZE, SIZE), PIL.Image.Transform.AFFINE,
      augment._inverse_affine(SIZE, angle, scale, shift_x, shift_y, stretch),
      resample=PIL.Image.Resampling.BILINEAR)
  coordinates = device_augment.warp_coordinates(
      SIZE, jnp.float32(angle), jnp.float32(scale), jnp.array([shift_x, shift_y]),
      _whole_image(), jnp.float32(stretch))
  warped = device_augment.resample(jnp.asarray(image), coordinates)
  np.testing.assert_allclose(warped, np.asarray(expected), atol=1e-5)
  assert (np.asarray(warped) == 0).any() == (np.asarray(expected) == 0).any()


def test_crop_box_reads_the_image_as_pils_resize_of_a_box():
  image = _pattern()
  box = (2.0, 5.0, 15.0, 17.5)  # left, top, width, height
  expected = PIL.Image.fromarray(image, mode="F").resize(
      (SIZE, SIZE), PIL.Image.Resampling.BILINEAR,
      box=(box[0], box[1], box[0] + box[2], box[1] + box[3]))
  coordinates = device_augment.warp_coordinates(SIZE, jnp.float32(0), jnp.float32(1),
                                                jnp.zeros(2), box)
  np.testing.assert_allclose(device_augment.resample(jnp.asarray(image), coordinates),
                             np.asarray(expected), atol=1e-5)


def test_blur_is_skimages_gaussian():
  image = _pattern()
  expected = skimage.filters.gaussian(image, sigma=1.5, mode="nearest", truncate=4.0)
  blurred = device_augment.gaussian_blur(jnp.asarray(image), jnp.float32(1.5), radius=6)
  np.testing.assert_allclose(blurred, expected, atol=1e-5)
  sharp = device_augment.gaussian_blur(jnp.asarray(image), jnp.float32(0.0), radius=6)
  np.testing.assert_allclose(sharp, image, atol=1e-6)


def _augmented(config: ml_collections.ConfigDict, seed: int = 0) -> np.ndarray:
  return np.asarray(device_augment.augment_image(jnp.asarray(_pattern()),
                                                 jax.random.key(seed), config))


def test_each_step_acts_only_when_on():
  image = _pattern()
  np.testing.assert_allclose(_augmented(no_augment()), image, atol=1e-6)
  np.testing.assert_allclose(_augmented(no_augment(hflip_prob=1.0)), image[:, ::-1], atol=1e-6)
  # Gamma: one exponent for every pixel, within exp(+-gamma).
  exponents = np.log(_augmented(no_augment(gamma=0.3))) / np.log(image)
  assert np.ptp(exponents) < 1e-3 and np.exp(-0.3) <= exponents.mean() <= np.exp(0.3)
  assert not np.allclose(exponents.mean(), 1.0, atol=1e-3)
  # Contrast: deviations from the mean scaled by one gain within 1 +- contrast.
  contrasted = _augmented(no_augment(contrast=0.2))
  gains = (contrasted - contrasted.mean()) / (image - image.mean())
  assert np.ptp(gains) < 1e-3 and 0.8 <= gains.mean() <= 1.2
  # Ramp: one slope per image, rows offset in proportion to their height, the mean kept.
  ramped = _augmented(no_augment(intensity_ramp=0.2), seed=3) - image
  row_offsets = ramped.mean(axis=1)
  slopes = np.diff(row_offsets) * image.shape[0]
  assert np.ptp(slopes) < 1e-3 and 0.001 < abs(slopes.mean()) <= 0.2
  assert abs(row_offsets.mean()) < 1e-5 and np.ptp(ramped, axis=1).max() < 1e-5
  # Stretch: one draw from its own key, so the other steps' draws are as without it.
  stretched = _augmented(no_augment(stretch=0.2, rotation_degrees=10.0), seed=1)
  rotated = _augmented(no_augment(rotation_degrees=10.0), seed=1)
  assert not np.allclose(stretched, rotated, atol=1e-3)
  np.testing.assert_allclose(_augmented(no_augment(stretch=1e-6, rotation_degrees=10.0),
                                         seed=1), rotated, atol=1e-4)
  for strong in (no_augment(noise_std=0.1), no_augment(blur_sigma=0.05),
                 no_augment(crop_area_min=0.5), no_augment(rotation_degrees=20.0)):
    changed = _augmented(strong)
    assert not np.allclose(changed, image, atol=1e-3)
    assert changed.min() >= 0.0 and changed.max() <= 1.0


def _data_config(grayscale: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      mean=0.5, std=0.25, grayscale=grayscale, augment_on="device",
      augment=no_augment(rotation_degrees=10.0, scale_min=0.9, scale_max=1.1,
                         translate_fraction=0.08, brightness=0.1, contrast=0.1)))


@pytest.mark.parametrize("grayscale", [True, False])
def test_batch_gets_its_own_draw_per_image_and_is_normalized(grayscale):
  config = _data_config(grayscale)
  channels = 1 if grayscale else 3
  images = jnp.broadcast_to(jnp.asarray(_pattern(), device_augment.STEP_INPUT_DTYPE),
                            (4, SIZE, SIZE))
  augment_step = device_augment.step_augment(config)
  out = np.asarray(jax.jit(augment_step)(images, jax.random.key(3)))
  again = np.asarray(jax.jit(augment_step)(images, jax.random.key(3)))
  other = np.asarray(jax.jit(augment_step)(images, jax.random.key(4)))
  assert out.shape == (4, SIZE, SIZE, channels) and out.dtype == np.float32
  np.testing.assert_array_equal(out, again)
  assert not np.allclose(out, other)
  assert all(not np.allclose(out[0], out[i]) for i in range(1, 4))
  np.testing.assert_array_equal(out, np.repeat(out[..., :1], channels, axis=-1))
  assert out.min() >= (0 - 0.5) / 0.25 - 1e-6 and out.max() <= (1 - 0.5) / 0.25 + 1e-6


@pytest.mark.parametrize("grayscale", [True, False])
def test_without_augmentation_the_step_sees_the_hosts_normalized_images(grayscale):
  config = _data_config(grayscale)
  config.augment = no_augment()
  gray = np.stack([_pattern(), 1 - _pattern()]).astype(device_augment.STEP_INPUT_DTYPE)
  out = np.asarray(device_augment.augment_batch(jnp.asarray(gray), jax.random.key(0), config))
  expected = (gray.astype(np.float32)[..., None] - 0.5) / 0.25
  np.testing.assert_allclose(out, np.repeat(expected, 1 if grayscale else 3, axis=-1),
                             atol=1e-5)


def test_host_augmentation_has_no_step_augment():
  config = _data_config(True)
  config.augment_on = "host"
  assert device_augment.step_augment(config) is None


def test_train_step_augments_with_a_key_of_its_step():
  mesh = sharding.make_mesh()
  model = models.create_model(ml_collections.ConfigDict(
      dict(name="cnn", dtype="float32", **SMALL_MODELS["cnn"])), 2)
  tx = optimizers.create_optimizer(ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.1, weight_decay=0.0, momentum=0.0, nesterov=False,
      grad_clip_norm=0.0)), lambda step: 0.1)
  state = train.create_train_state(model, tx, (SIZE, SIZE, 1), 0, mesh)
  labels = np.random.default_rng(0).integers(0, 2, 8).astype(np.int32)
  gray = np.repeat(_pattern()[None].astype(device_augment.STEP_INPUT_DTYPE), 8, axis=0)
  batch = sharding.to_global_batch({"image": gray, "label": labels}, mesh)
  normalized = sharding.to_global_batch(
      {"image": (gray[..., None].astype(np.float32) - 0.5) / 0.25, "label": labels}, mesh)
  seen = []
  record = lambda images, key: (seen.append(None), device_augment.augment_batch(
      images, key, _data_config(True)))[1]
  step_args = dict(schedule=lambda step: 0.1, loss=losses.mean_loss(losses.cross_entropy))
  plain = train.make_train_step(mesh, **step_args)
  augmented = train.make_train_step(mesh, **step_args, augment=record)
  copy = lambda s: jax.tree.map(jnp.copy, s)  # The steps donate their state.
  _, plain_metrics = plain(copy(state), normalized)
  _, first = augmented(copy(state), batch)
  _, again = augmented(copy(state), batch)
  _, later = augmented(copy(state).replace(step=state.step + 1), batch)
  assert seen  # Traced into the step.
  assert first["loss"] == again["loss"]
  assert first["loss"] != plain_metrics["loss"]
  assert later["loss"] != first["loss"]
