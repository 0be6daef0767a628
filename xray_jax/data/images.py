"""Decoding image files into float arrays of a fixed size."""

import numpy as np
import PIL.Image

from xray_jax import errors


def load_image(path: str, size: int) -> np.ndarray:
  """Returns the image at `path` as gray float32 [size, size] in [0, 1].

  Colour files are converted to luminance: X-rays are gray.
  """
  try:
    with PIL.Image.open(path) as image:
      image.draft("L", (size, size))  # JPEG: decode at a reduced scale when much larger.
      image = image.convert("L")
      if image.size != (size, size):
        image = image.resize((size, size), PIL.Image.Resampling.BILINEAR)
      pixels = np.asarray(image, dtype=np.float32) / 255.0
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise errors.DataError(f"{path}: cannot read image: {e}") from e
  return pixels
