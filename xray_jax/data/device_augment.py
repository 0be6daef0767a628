"""Train-time augmentation inside the jitted train step (`data.augment_on="device"`).

The transforms and ranges of `data.augment` that `xray_jax.data.augment` applies in the grain
workers: a random resized crop and the affine warp with its stretch (composed into one
bilinear resampling), a horizontal flip, exposure and contrast, a brightness ramp, gamma,
blur and noise. Each image draws its own numbers from the step's key. On an accelerator
this costs little next to the model, and the workers are left to read and batch images; the
draws differ from the host's, so the two settings train on equally distributed but not
identical images.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.scipy import ndimage


def _uniform(key: jax.Array, low: float, high: float, shape: tuple[int, ...] = ()) -> jax.Array:
  return jax.random.uniform(key, shape, minval=low, maxval=high)


def _crop_box(key: jax.Array, size: int, area_min: float) -> tuple[jax.Array, ...]:
  """(left, top, width, height) of a random crop of `area_min` to all of the area, aspect
  ratio 3/4 to 4/3, placed uniformly (as `augment.random_resized_crop`)."""
  area_key, aspect_key, place_key = jax.random.split(key, 3)
  area = _uniform(area_key, area_min, 1.0)
  aspect = jnp.exp(_uniform(aspect_key, math.log(3 / 4), math.log(4 / 3)))
  width = jnp.minimum(1.0, jnp.sqrt(area * aspect)) * size
  height = jnp.minimum(1.0, jnp.sqrt(area / aspect)) * size
  left, top = _uniform(place_key, 0.0, 1.0, (2,)) * jnp.stack([size - width, size - height])
  return left, top, width, height


def warp_coordinates(size: int, angle_degrees: jax.Array, scale: jax.Array,
                     shift: jax.Array, box: tuple[jax.Array, ...],
                     stretch: jax.Array | float = 1.0) -> jax.Array:
  """[2, size, size] (row, column) input coordinates of each output pixel, pixel centres at
  integers: the crop `box` (left, top, width, height) resized to the full size, then scaled
  by `scale / stretch` in width and `scale * stretch` in height, rotated by `angle_degrees`
  about the centre and shifted by `shift` (x, y)."""
  centre = size / 2
  ys, xs = jnp.meshgrid(jnp.arange(size) + 0.5, jnp.arange(size) + 0.5, indexing="ij")
  theta = jnp.deg2rad(angle_degrees)
  cos, sin = jnp.cos(theta) / scale, jnp.sin(theta) / scale
  dx, dy = xs - centre - shift[0], ys - centre - shift[1]
  left, top, width, height = box
  x_in = left + (centre + cos * stretch * dx + sin * stretch * dy) * width / size
  y_in = top + (centre - sin / stretch * dx + cos / stretch * dy) * height / size
  return jnp.stack([y_in - 0.5, x_in - 0.5])


def resample(image: jax.Array, coordinates: jax.Array) -> jax.Array:
  """`image` read bilinearly at (row, column) `coordinates` as PIL's affine transform reads
  it: 0 where a point falls outside the image's area, the edge pixels extended within it."""
  extent = jnp.array(image.shape, coordinates.dtype).reshape(2, 1, 1)
  inside = jnp.all((coordinates >= -0.5) & (coordinates < extent - 0.5), axis=0)
  values = ndimage.map_coordinates(image, list(coordinates), order=1, mode="nearest")
  return jnp.where(inside, values, 0.0)


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """A separable Gaussian blur of standard deviation `sigma` pixels (0: none) over
  2 * radius + 1 taps, edges extended."""
  taps = jnp.arange(-radius, radius + 1, dtype=image.dtype)
  weights = jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-3)) ** 2)
  weights = weights / weights.sum()
  padded = jnp.pad(image, radius, mode="edge")
  rows = jax.vmap(lambda row: jnp.convolve(row, weights, mode="valid"))(padded)
  return jax.vmap(lambda column: jnp.convolve(column, weights, mode="valid"),
                  in_axes=1, out_axes=1)(rows)


def augment_image(image: jax.Array, key: jax.Array,
                  config: ml_collections.ConfigDict) -> jax.Array:
  """A randomly cropped, warped, flipped, re-exposed, blurred and noisy copy of a gray
  [S, S] image in [0, 1], drawn from `key`."""
  size = image.shape[0]
  keys = iter(jax.random.split(key, 10))
  box = ((0.0, 0.0, float(size), float(size)) if config.crop_area_min >= 1
         else _crop_box(next(keys), size, config.crop_area_min))
  angle = _uniform(next(keys), -config.rotation_degrees, config.rotation_degrees)
  scale = _uniform(next(keys), config.scale_min, config.scale_max)
  shift = _uniform(next(keys), -1.0, 1.0, (2,)) * config.translate_fraction * size
  stretch = 1.0
  if config.get("stretch", 0.0) > 0:  # Its own key, as the ramp's.
    stretch = jnp.exp(_uniform(jax.random.fold_in(key, 2), -config.stretch, config.stretch))
  image = resample(image, warp_coordinates(size, angle, scale, shift, box, stretch))
  image = jnp.where(_uniform(next(keys), 0.0, 1.0) < config.hflip_prob, image[:, ::-1], image)
  gain = _uniform(next(keys), 1 - config.contrast, 1 + config.contrast)
  offset = _uniform(next(keys), -config.brightness, config.brightness)
  mean = image.mean()
  image = jnp.clip((image - mean) * gain + mean + offset, 0.0, 1.0)
  if config.get("intensity_ramp", 0.0) > 0:  # Its own key: the others' draws stay as they were.
    slope = _uniform(jax.random.fold_in(key, 1), -config.intensity_ramp, config.intensity_ramp)
    rows = (jnp.arange(size, dtype=image.dtype) + 0.5) / size - 0.5
    image = jnp.clip(image + slope * rows[:, None], 0.0, 1.0)
  if config.gamma > 0:
    image = jnp.clip(image ** jnp.exp(_uniform(next(keys), -config.gamma, config.gamma)), 0, 1)
  if config.blur_sigma > 0:
    sigma = _uniform(next(keys), 0.0, config.blur_sigma) * size
    radius = int(4 * config.blur_sigma * size + 0.5)  # As skimage's gaussian truncates.
    image = jnp.clip(gaussian_blur(image, sigma, radius), 0.0, 1.0)
  if config.noise_std > 0:
    noise_key, std_key = jax.random.split(next(keys))
    std = _uniform(std_key, 0.0, config.noise_std)
    image = jnp.clip(image + std * jax.random.normal(noise_key, image.shape), 0.0, 1.0)
  return image


# The train batches' images with augmentation on the device: gray [B, S, S] in [0, 1], in the
# image cache's type (2 bytes a pixel: half what normalized float32 takes to cross to the device).
STEP_INPUT_DTYPE = np.float16


def on_device(data_config: ml_collections.ConfigDict) -> bool:
  """Whether the train step augments (`data.augment_on`; runs saved before it: the host)."""
  return data_config.get("augment_on", "host") == "device"


def step_augment(data_config: ml_collections.ConfigDict
                 ) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
  """The train step's augmentation, (images, key) -> images: `augment_batch` when
  `data.augment_on` is device, else none (the input pipeline augments)."""
  if not on_device(data_config):
    return None
  return functools.partial(augment_batch, data_config=data_config)


def augment_batch(images: jax.Array, key: jax.Array,
                  data_config: ml_collections.ConfigDict) -> jax.Array:
  """Model inputs [B, S, S, C], float32, normalized as the host normalizes (channels: copies
  of the gray image), from the input pipeline's gray [B, S, S] images in [0, 1]
  (STEP_INPUT_DTYPE), each augmented by `augment_image` with its own key from `key`."""
  keys = jax.random.split(key, images.shape[0])
  augmented = jax.vmap(lambda image, k: augment_image(image, k, data_config.augment))(
      images.astype(jnp.float32), keys)
  normalized = (augmented - data_config.mean) / data_config.std
  channels = 1 if data_config.grayscale else 3
  return jnp.broadcast_to(normalized[..., None], (*images.shape, channels))
