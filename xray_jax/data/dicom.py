"""Reading DICOM files as gray images the way a reading room displays them.

Only image tags are parsed (pydicom parses values on access), and messages name the file:
patient-identifying values never reach a message, log line or warning.
"""

import pathlib

import numpy as np
import pydicom
from pydicom import pixels

from xray_jax import errors
from xray_jax.data.images import DICOM_MULTIFRAME_MODES, LUMA

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Colour encodings pydicom decodes to RGB.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def read_dicom(path: str | pathlib.Path, multiframe: str = "first") -> np.ndarray:
  """Returns the (first) frame of a DICOM file as gray float32 [H, W] in [0, 1], white = dense.

  Monochrome: modality LUT, then the first VOI LUT or window (else min-max of the modality
  values), with MONOCHROME1 inverted. Colour: luminance of the RGB values.
  """
  if multiframe not in DICOM_MULTIFRAME_MODES:
    raise ValueError(f"multiframe={multiframe!r}; expected one of {DICOM_MULTIFRAME_MODES}")
  ds = _read_dataset(path)
  if "PixelData" not in ds:
    raise errors.DataError(f"{path}: no pixel data (not an image, or a truncated file)")
  photometric = ds.get("PhotometricInterpretation")
  if photometric not in MONOCHROME + COLOUR:
    raise errors.DataError(
        f"{path}: photometric interpretation {photometric!r} is not supported "
        f"(expected one of {', '.join(MONOCHROME + COLOUR)})")
  frames = int(ds.get("NumberOfFrames") or 1)
  if frames > 1 and multiframe == "error":
    raise errors.DataError(
        f"{path}: {frames} frames; config.data.dicom_multiframe='first' would use the first")
  _check_decoder(path, ds)
  try:
    stored = pixels.pixel_array(ds, index=0)  # Signed and BitsStored handled when decoding.
    if photometric in COLOUR:
      return (stored @ LUMA / (2**ds.BitsStored - 1)).astype(np.float32)
    gray = _display_values(ds, stored)
  except (AttributeError, KeyError, TypeError, ValueError, RuntimeError, EOFError) as e:
    raise errors.DataError(f"{path}: cannot decode the pixel data: {e}") from e
  return 1 - gray if photometric == "MONOCHROME1" else gray


def _read_dataset(path: str | pathlib.Path) -> pydicom.Dataset:
  try:
    return pydicom.dcmread(path)
  except pydicom.errors.InvalidDicomError as e:
    raise errors.DataError(f"{path}: not a DICOM file ({e})") from e
  except (OSError, EOFError, ValueError, KeyError, TypeError) as e:  # Truncated or corrupt.
    raise errors.DataError(f"{path}: cannot read DICOM: {e}") from e


def _check_decoder(path: str | pathlib.Path, ds: pydicom.Dataset) -> None:
  """Raises DataError if the pixel data's transfer syntax cannot be decoded here."""
  syntax = ds.file_meta.get("TransferSyntaxUID")
  if syntax is None:
    raise errors.DataError(f"{path}: DICOM without a transfer syntax in its file meta")
  try:
    decoder = pixels.get_decoder(syntax)
  except NotImplementedError as e:
    raise errors.DataError(
        f"{path}: transfer syntax {syntax.name} ({syntax}) is not supported") from e
  if not decoder.is_available:
    raise errors.DataError(
        f"{path}: no decoder installed for transfer syntax {syntax.name} ({syntax}); "
        "pip install -e '.[dicom]'")


def _display_values(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
  """Stored monochrome values -> float32 in [0, 1], in the photometric's own sense."""
  values = pixels.apply_modality_lut(stored, ds)
  voi_range = _voi_range(ds)
  if voi_range is None:
    low, high = values.min(), values.max()
  else:
    values = pixels.apply_voi_lut(values, ds)
    low, high = voi_range
  if high <= low:  # A blank image, or a window that maps everything to one value.
    return np.zeros(values.shape, np.float32)
  return np.clip((values - low) / (high - low), 0, 1).astype(np.float32)


def _voi_range(ds: pydicom.Dataset) -> tuple[float, float] | None:
  """The output range of the VOI transform apply_voi_lut picks (the values shown as black
  and white), or None when the dataset has neither a VOI LUT nor a window."""
  lut = ds.get("VOILUTSequence")
  if lut and lut[0].get("LUTDescriptor") and lut[0].get("LUTData") is not None:
    count, first = lut[0].LUTDescriptor[:2]
    inputs = np.arange(first, first + (count or 2**16))  # The whole LUT.
  elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
    inputs = np.array([-np.inf, np.inf])  # Below and above the window.
  else:
    return None
  outputs = pixels.apply_voi_lut(inputs, ds)
  return float(outputs.min()), float(outputs.max())
