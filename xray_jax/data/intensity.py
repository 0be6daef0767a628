"""Per-image intensity standardization (scikit-image): the same histogram shape whatever the
exposure and contrast of the acquisition."""

import numpy as np
import skimage.exposure

METHODS = ("none", "equalize", "clahe")


def standardize(image: np.ndarray, method: str, clip_limit: float = 0.01) -> np.ndarray:
  """A gray float image [H, W] in [0, 1] -> float32 in [0, 1], standardized by `method`:
  none; equalize (global histogram equalization); clahe (contrast-limited adaptive
  histogram equalization, tiles of 1/8 of the size, `clip_limit` in (0, 1])."""
  if method == "none":
    return image
  if method == "equalize":
    return skimage.exposure.equalize_hist(image).astype(np.float32)
  if method == "clahe":
    return skimage.exposure.equalize_adapthist(image, clip_limit=clip_limit).astype(np.float32)
  raise ValueError(f"intensity method {method!r}; expected one of {', '.join(METHODS)}")
