"""Decoding image files into float arrays of a fixed size."""

import pathlib

import numpy as np
import PIL.Image

from xray_jax import errors
from xray_jax.data import dicom


def load_image(path: str, size: int, dicom_multiframe: str = "first") -> np.ndarray:
  """Returns the image at `path` as gray float32 [size, size] in [0, 1].

  Colour files are converted to luminance: X-rays are gray. `.dcm` files are read with
  dicom.read_dicom(path, dicom_multiframe).
  """
  if pathlib.Path(path).suffix.lower() == ".dcm":
    return _resize(PIL.Image.fromarray(dicom.read_dicom(path, dicom_multiframe)), size)
  try:
    with PIL.Image.open(path) as image:
      image.draft("L", (size, size))  # JPEG: decode at a reduced scale when much larger.
      return _resize(image.convert("L"), size)
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise errors.DataError(f"{path}: cannot read image: {e}") from e


def load_array(image: np.ndarray, size: int) -> np.ndarray:
  """An image array as gray float32 [size, size] in [0, 1], resized as image files are.

  `image`: [H, W], [H, W, 1] or [H, W, 3]; uint8, or float in [0, 1].
  """
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  elif not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
    raise errors.DataError(f"image of shape {image.shape}: expected [H, W] or [H, W, 1 or 3]")
  if image.dtype == np.uint8:
    return _resize(PIL.Image.fromarray(image).convert("L"), size)  # Mode L, as files are.
  pixels = image.astype(np.float32)
  return _resize(PIL.Image.fromarray(pixels @ dicom.LUMA.astype(np.float32)
                                     if pixels.ndim == 3 else pixels), size)  # Mode F.


def _resize(image: PIL.Image.Image, size: int) -> np.ndarray:
  """A gray image, mode L (0..255) or F (0..1) -> float32 [size, size] in [0, 1]."""
  if image.size != (size, size):
    image = image.resize((size, size), PIL.Image.Resampling.BILINEAR)
  pixels = np.asarray(image, dtype=np.float32)
  return pixels / 255.0 if image.mode == "L" else pixels
