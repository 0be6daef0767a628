"""Train-time augmentation of gray images: a random affine warp, flips and intensity."""

import math

import ml_collections
import numpy as np
import PIL.Image


def _inverse_affine(
    size: int, angle_degrees: float, scale: float, shift_x: float, shift_y: float
) -> tuple[float, ...]:
  """PIL affine coefficients mapping output pixels back to input pixels.

  The forward warp rotates by `angle_degrees` and scales by `scale` about the centre,
  then shifts by (shift_x, shift_y) pixels.
  """
  centre = size / 2  # PIL puts pixel centres at half-integer coordinates.
  theta = math.radians(angle_degrees)
  cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
  # input = centre + R(-theta) / scale @ (output - centre - shift)
  ox, oy = centre + shift_x, centre + shift_y
  return (cos, sin, centre - cos * ox - sin * oy,
          -sin, cos, centre + sin * ox - cos * oy)


def augment_image(
    image: np.ndarray, config: ml_collections.ConfigDict, rng: np.random.Generator
) -> np.ndarray:
  """Returns a randomly warped, flipped and re-exposed copy of a [H, W] image in [0, 1]."""
  size = image.shape[0]
  angle = rng.uniform(-config.rotation_degrees, config.rotation_degrees)
  scale = rng.uniform(config.scale_min, config.scale_max)
  shift_x, shift_y = rng.uniform(-1, 1, size=2) * config.translate_fraction * size
  warped = PIL.Image.fromarray(image, mode="F").transform(
      (size, size), PIL.Image.Transform.AFFINE,
      _inverse_affine(size, angle, scale, shift_x, shift_y),
      resample=PIL.Image.Resampling.BILINEAR)
  image = np.asarray(warped, dtype=np.float32)
  if rng.uniform() < config.hflip_prob:
    image = image[:, ::-1]
  gain = rng.uniform(1 - config.contrast, 1 + config.contrast)
  offset = rng.uniform(-config.brightness, config.brightness)
  mean = image.mean()
  return np.clip((image - mean) * gain + mean + offset, 0.0, 1.0)
