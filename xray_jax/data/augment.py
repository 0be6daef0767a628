"""Train-time augmentation of gray images: a random resized crop, an affine warp (with an
optional stretch of the proportions), flips, exposure and contrast, a top-to-bottom
brightness ramp, blur and noise. Each optional step draws random numbers only when it is on,
so with it off the draws are those of a config without it."""

import math

import ml_collections
import numpy as np
import PIL.Image

from xray_jax.data import shifts


def _inverse_affine(
    size: int, angle_degrees: float, scale: float, shift_x: float, shift_y: float,
    stretch: float = 1.0,
) -> tuple[float, ...]:
  """PIL affine coefficients mapping output pixels back to input pixels.

  The forward warp scales the width by `scale / stretch` and the height by
  `scale * stretch`, then rotates by `angle_degrees` about the centre and shifts by
  (shift_x, shift_y) pixels.
  """
  centre = size / 2  # PIL puts pixel centres at half-integer coordinates.
  theta = math.radians(angle_degrees)
  cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
  # input = centre + diag(stretch, 1 / stretch) @ R(-theta) / scale @ (output - centre - shift)
  xc, xs, yc, ys = cos * stretch, sin * stretch, cos / stretch, sin / stretch
  ox, oy = centre + shift_x, centre + shift_y
  return (xc, xs, centre - xc * ox - xs * oy,
          -ys, yc, centre + ys * ox - yc * oy)


def random_resized_crop(image: np.ndarray, area_min: float,
                        rng: np.random.Generator) -> np.ndarray:
  """A random crop of `area_min` to all of the image's area, aspect ratio 3/4 to 4/3, placed
  uniformly, resized back to the image's size."""
  size = image.shape[0]
  area = rng.uniform(area_min, 1.0)
  aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
  width = min(1.0, math.sqrt(area * aspect)) * size
  height = min(1.0, math.sqrt(area / aspect)) * size
  left, top = rng.uniform(0, size - width), rng.uniform(0, size - height)
  cropped = PIL.Image.fromarray(image, mode="F").resize(
      (size, size), PIL.Image.Resampling.BILINEAR, box=(left, top, left + width, top + height))
  return np.asarray(cropped, dtype=np.float32)


def augment_image(
    image: np.ndarray, config: ml_collections.ConfigDict, rng: np.random.Generator
) -> np.ndarray:
  """Returns a randomly cropped, warped, flipped, re-exposed, blurred and noisy copy of a
  [H, W] image in [0, 1]."""
  if config.crop_area_min < 1:
    image = random_resized_crop(image, config.crop_area_min, rng)
  size = image.shape[0]
  angle = rng.uniform(-config.rotation_degrees, config.rotation_degrees)
  scale = rng.uniform(config.scale_min, config.scale_max)
  stretch = 1.0
  if config.get("stretch", 0.0) > 0:
    stretch = math.exp(rng.uniform(-config.stretch, config.stretch))
  shift_x, shift_y = rng.uniform(-1, 1, size=2) * config.translate_fraction * size
  warped = PIL.Image.fromarray(image, mode="F").transform(
      (size, size), PIL.Image.Transform.AFFINE,
      _inverse_affine(size, angle, scale, shift_x, shift_y, stretch),
      resample=PIL.Image.Resampling.BILINEAR)
  image = np.asarray(warped, dtype=np.float32)
  if rng.uniform() < config.hflip_prob:
    image = image[:, ::-1]
  gain = rng.uniform(1 - config.contrast, 1 + config.contrast)
  offset = rng.uniform(-config.brightness, config.brightness)
  mean = image.mean()
  image = np.clip((image - mean) * gain + mean + offset, 0.0, 1.0)
  if config.get("intensity_ramp", 0.0) > 0:
    slope = rng.uniform(-config.intensity_ramp, config.intensity_ramp)
    image = np.clip(image + slope * _row_positions(size)[:, None], 0.0, 1.0).astype(np.float32)
  # Gamma, blur and noise act as the stress test's shifts do, at a random level.
  if config.gamma > 0:
    image = _shift("gamma", image, math.exp(rng.uniform(-config.gamma, config.gamma)), rng)
  if config.blur_sigma > 0:
    image = _shift("blur", image, rng.uniform(0, config.blur_sigma), rng)
  if config.noise_std > 0:
    image = _shift("noise", image, rng.uniform(0, config.noise_std), rng)
  return image


def _row_positions(size: int) -> np.ndarray:
  """Each row's centre as a fraction of the height, from the middle: -0.5 (top) to 0.5."""
  return (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5


def _shift(name: str, image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
  return np.clip(shifts.SHIFTS[name][0](image, level, rng), 0.0, 1.0).astype(np.float32)
