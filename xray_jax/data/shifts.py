"""Controlled acquisition shifts of a gray image, three severities each: the stress test's
stand-in for a new scanner, protocol or hospital (exposure, contrast, sharpness, noise,
compression, resolution and framing).

A shift acts on the decoded image at its own size, before the model's resize and
normalization. It is deterministic: its noise is seeded by the shift's seed and a key that
names the image.
"""

import dataclasses
import io
from collections.abc import Callable

import numpy as np
import PIL.Image
import skimage.filters

SEVERITIES = (1, 2, 3)


def _brightness(image: np.ndarray, offset: float, rng: np.random.Generator) -> np.ndarray:
  """Over-exposure: every pixel brighter by `offset` on the [0, 1] scale."""
  return image + offset


def _gamma(image: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
  """A different detector response: gamma > 1 darkens the mid-tones, keeps 0 and 1."""
  return image ** gamma


def _contrast(image: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
  """Flatter contrast: deviations from the mean intensity scaled by `gain` < 1."""
  return (image - image.mean()) * gain + image.mean()


def _blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """A softer detector or motion: Gaussian blur, sigma a fraction of the image width."""
  return skimage.filters.gaussian(image, sigma=sigma * image.shape[1], mode="nearest")


def _noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
  """A lower dose: additive Gaussian noise of standard deviation `std`."""
  return image + rng.normal(0.0, std, image.shape)


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
  """Lossy archiving: 8-bit JPEG re-compression at `quality`."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(_to_uint8(image)).save(buffer, format="JPEG", quality=int(quality))
  with PIL.Image.open(buffer) as decoded:
    return np.asarray(decoded, np.float32) / 255.0


def _resolution(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
  """A coarser detector: down-sampled by `factor`, then back to the original size."""
  height, width = image.shape
  small = _picture(image).resize((max(1, round(width * factor)), max(1, round(height * factor))),
                                 PIL.Image.Resampling.BILINEAR)
  return np.asarray(small.resize((width, height), PIL.Image.Resampling.BILINEAR))


def _zoom(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
  """Tighter collimation: the central 1 / `factor` of the field enlarged to the full size."""
  height, width = image.shape
  dx, dy = width * (1 - 1 / factor) / 2, height * (1 - 1 / factor) / 2
  return np.asarray(_picture(image).resize(
      (width, height), PIL.Image.Resampling.BILINEAR, box=(dx, dy, width - dx, height - dy)))


def _padding(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
  """A wider field: the image shrunk to `factor` of its size, centred on a black border."""
  height, width = image.shape
  small = _picture(image).resize((round(width * factor), round(height * factor)),
                                 PIL.Image.Resampling.BILINEAR)
  canvas = PIL.Image.new("F", (width, height), 0.0)
  canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
  return np.asarray(canvas)


def _translate(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
  """Off-centre positioning: moved right and down by `fraction` of the size, black behind."""
  dy, dx = (round(fraction * n) for n in image.shape)
  moved = np.zeros_like(image)
  moved[dy:, dx:] = image[:image.shape[0] - dy, :image.shape[1] - dx]
  return moved


def _picture(image: np.ndarray) -> PIL.Image.Image:
  return PIL.Image.fromarray(image.astype(np.float32), mode="F")


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# Shift name -> (what it does to an image at a level, its level at severities 1, 2, 3).
SHIFTS: dict[str, tuple[Callable[[np.ndarray, float, np.random.Generator], np.ndarray],
                        tuple[float, float, float]]] = {
    "brightness": (_brightness, (0.1, 0.2, 0.3)),
    "gamma": (_gamma, (1.4, 1.8, 2.5)),
    "contrast": (_contrast, (0.75, 0.5, 0.3)),
    "blur": (_blur, (0.005, 0.01, 0.02)),
    "noise": (_noise, (0.03, 0.06, 0.12)),
    "jpeg": (_jpeg, (30, 15, 5)),
    "resolution": (_resolution, (0.5, 0.33, 0.25)),
    "zoom": (_zoom, (1.1, 1.2, 1.35)),
    "padding": (_padding, (0.9, 0.8, 0.65)),
    "translate": (_translate, (0.05, 0.1, 0.15)),
}


@dataclasses.dataclass(frozen=True)
class Shift:
  """One shift at one severity (1 mild to 3 strong); picklable for grain workers."""

  name: str
  severity: int
  seed: int = 0

  @property
  def level(self) -> float:
    return SHIFTS[self.name][1][self.severity - 1]

  def __call__(self, image: np.ndarray, key: int) -> np.ndarray:
    """A gray float [H, W] image in [0, 1] -> the shifted float32 image, same shape and range.

    `key` names the image (e.g. a hash of its path): the same key gives the same noise.
    """
    rng = np.random.default_rng([self.seed, key])
    shifted = SHIFTS[self.name][0](np.asarray(image, np.float32), self.level, rng)
    return np.clip(shifted, 0.0, 1.0).astype(np.float32)


def all_shifts(seed: int = 0) -> list[Shift]:
  """Every shift at every severity."""
  return [Shift(name, severity, seed) for name in SHIFTS for severity in SEVERITIES]
