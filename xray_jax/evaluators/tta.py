"""Test-time augmentation: class probabilities averaged over the image and simple views of
it (a mirror image, small translations, a slight zoom), computed inside the jitted step."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_jax import errors, models, tasks

SHIFT_FRACTION = 0.04  # "shift": four views moved by this share of the size (at least 1 px).
ZOOM = 1.1  # "zoom": the central 1 / ZOOM of the image enlarged to the full size.


def _translate(images: jax.Array, dy: int, dx: int) -> jax.Array:
  """Batch [N, H, W, C] moved by (dy, dx) pixels, the border pixels repeated behind."""
  pad = max(abs(dy), abs(dx))
  height, width = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
  return padded[:, pad - dy:pad - dy + height, pad - dx:pad - dx + width]


def _shifted(images: jax.Array) -> list[jax.Array]:
  step = max(1, round(SHIFT_FRACTION * images.shape[1]))
  return [_translate(images, dy, dx) for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step))]


def _zoomed(images: jax.Array) -> list[jax.Array]:
  height, width = images.shape[1:3]
  top, left = round(height * (1 - 1 / ZOOM) / 2), round(width * (1 - 1 / ZOOM) / 2)
  crop = images[:, top:height - top, left:width - left]
  return [jax.image.resize(crop, images.shape, "bilinear")]


# View name (config.evaluation.tta) -> the extra inputs it adds for a batch [N, H, W, C].
VIEWS: dict[str, Callable[[jax.Array], list[jax.Array]]] = {
    "hflip": lambda images: [jnp.flip(images, axis=2)],
    "shift": _shifted,
    "zoom": _zoomed,
}


def parse_views(spec: str) -> tuple[str, ...]:
  """`config.evaluation.tta`: "none", or comma-separated names of VIEWS."""
  if spec.strip() in ("", "none"):
    return ()
  names = tuple(name.strip() for name in spec.split(","))
  for name in names:
    if name not in VIEWS:
      raise errors.ConfigError(
          f"config.evaluation.tta={spec!r}: {name!r} is not a view; expected none or a list "
          f"of {', '.join(VIEWS)}")
  return names


def probabilities(model: nn.Module, variables: dict, images: jax.Array,
                  views: tuple[str, ...] = (),
                  task: tasks.Task = tasks.SINGLE_LABEL) -> jax.Array:
  """Probabilities [N, classes] of `task`, averaged over `images` and their `views`."""
  inputs = [images, *(view for name in views for view in VIEWS[name](images))]
  return jnp.mean(jnp.stack([models.class_probabilities(model, variables, x, task)
                             for x in inputs]), axis=0)


def configured_views(evaluation_config) -> tuple[str, ...]:
  """The views of a run's `evaluation` section (runs saved before TTA existed have none)."""
  return parse_views(evaluation_config.get("tta", "none"))

