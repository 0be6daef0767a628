"""Decoding image files into float arrays of a fixed size."""

import pathlib

import numpy as np
import PIL.Image

from xray_jax import errors

# Pillow's modes of 16-bit gray files.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# config.data.dicom_multiframe: use the first frame of a multi-frame DICOM file, or refuse it.
DICOM_MULTIFRAME_MODES = ("first", "error")
# ITU-R 601-2 luma, the weights PIL uses for colour JPEG/PNG files.
LUMA = np.array([0.299, 0.587, 0.114])


def load_image(path: str, size: int, dicom_multiframe: str = "first") -> np.ndarray:
  """Returns the image at `path` as gray float32 [size, size] in [0, 1]."""
  return resize(decode_file(path, dicom_multiframe), size)


def decode_file(path: str, dicom_multiframe: str = "first") -> PIL.Image.Image:
  """The image at `path` as a gray picture: mode L (0..255), or F (0..1) for DICOM and
  16-bit files.

  Colour files are converted to luminance: X-rays are gray. 16-bit gray files (PNG, TIFF)
  keep their depth, scaled by 65535 (Pillow's conversion to L would clip them at 255).
  `.dcm` files are read with dicom.read_dicom(path, dicom_multiframe). Files are always
  decoded at full size (no reduced-scale JPEG decoding), so an array of the same pixels
  preprocesses identically.
  """
  if pathlib.Path(path).suffix.lower() == ".dcm":
    from xray_jax.data import dicom  # pydicom (0.4 s to import) loads with the first DICOM.

    return PIL.Image.fromarray(dicom.read_dicom(path, dicom_multiframe))
  try:
    with PIL.Image.open(path) as image:
      if image.mode in SIXTEEN_BIT_MODES:
        return PIL.Image.fromarray(np.asarray(image, np.float32) / 65535.0)
      return image.convert("L")
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise errors.DataError(f"{path}: cannot read image: {e}") from e


def array_picture(image: np.ndarray) -> PIL.Image.Image:
  """An image array ([H, W], [H, W, 1] or [H, W, 3]; uint8, or float in [0, 1]) as a gray
  picture: mode L for uint8, as files are, else mode F."""
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  elif not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
    raise errors.DataError(f"image of shape {image.shape}: expected [H, W] or [H, W, 1 or 3]")
  if image.dtype == np.uint8:
    return PIL.Image.fromarray(image).convert("L")
  pixels = image.astype(np.float32)
  return PIL.Image.fromarray(pixels @ LUMA.astype(np.float32) if pixels.ndim == 3
                             else pixels)


def unit_pixels(image: PIL.Image.Image) -> np.ndarray:
  """A gray picture, mode L (0..255) or F (0..1) -> float32 [H, W] in [0, 1]."""
  pixels = np.asarray(image, dtype=np.float32)
  return pixels / 255.0 if image.mode == "L" else pixels


def resize(image: PIL.Image.Image, size: int) -> np.ndarray:
  """A gray picture, mode L or F -> float32 [size, size] in [0, 1]."""
  if image.size != (size, size):
    image = image.resize((size, size), PIL.Image.Resampling.BILINEAR)
  return unit_pixels(image)
