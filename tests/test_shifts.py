"""Acquisition shifts: each moves the image the intended way, more with severity, reproducibly."""

import itertools

import numpy as np
import PIL.Image
import pytest

from xray_jax import input_pipeline
from xray_jax.data import shifts


def _chest(size: int = 64) -> np.ndarray:
  """A smooth gray field with a bright centred square and fine texture."""
  rng = np.random.default_rng(0)
  image = np.full((size, size), 0.4, np.float32) + rng.uniform(-0.1, 0.1, (size, size))
  image[size // 4:3 * size // 4, size // 4:3 * size // 4] += 0.4
  return np.clip(image, 0, 1).astype(np.float32)


def _shifted(name: str, image: np.ndarray, key: int = 1) -> list[np.ndarray]:
  return [shifts.Shift(name, severity)(image, key) for severity in shifts.SEVERITIES]


def _high_frequency_energy(image: np.ndarray) -> float:
  return float(np.mean(np.diff(image, axis=0) ** 2) + np.mean(np.diff(image, axis=1) ** 2))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def _bright_pixels(image: np.ndarray) -> int:
  return int(np.sum(image > 0.6))


def _decreasing(values) -> bool:
  return all(a > b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("name", list(shifts.SHIFTS))
def test_every_shift_keeps_shape_and_range_and_is_deterministic(name):
  image = _chest()
  for shift in [shifts.Shift(name, s) for s in shifts.SEVERITIES]:
    out = shift(image, key=3)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, image, atol=1e-3)
    np.testing.assert_array_equal(out, shift(image, key=3))
  assert len(shifts.all_shifts()) == 3 * len(shifts.SHIFTS)


def test_exposure_and_contrast_shifts():
  image = _chest()
  assert _decreasing([-out.mean() for out in [image, *_shifted("brightness", image)]])
  mid = np.full((8, 8), 0.5, np.float32)
  mid[0, 0], mid[0, 1] = 0.0, 1.0
  darker = _shifted("gamma", mid)  # gamma > 1 darkens the mid-tones, keeps black and white.
  assert _decreasing([0.5] + [out[4, 4] for out in darker])
  assert all(out[0, 0] == 0.0 and out[0, 1] == 1.0 for out in darker)
  flatter = _shifted("contrast", image)
  assert _decreasing([image.std()] + [out.std() for out in flatter])
  np.testing.assert_allclose([out.mean() for out in flatter], image.mean(), atol=1e-5)


def test_blur_and_resolution_remove_fine_detail():
  image = _chest()
  for name in ("blur", "resolution"):
    energies = [_high_frequency_energy(out) for out in [image, *_shifted(name, image)]]
    assert _decreasing(energies), (name, energies)


def test_jpeg_quality_lowers_psnr_with_severity():
  image = _chest()
  assert _decreasing([_psnr(image, out) for out in _shifted("jpeg", image)])


def test_noise_grows_with_severity_and_follows_the_key():
  image = np.full((64, 64), 0.5, np.float32)
  noisy = _shifted("noise", image)
  np.testing.assert_allclose([out.std() for out in noisy], [0.03, 0.06, 0.12], rtol=0.1)
  shift = shifts.Shift("noise", 2)
  assert not np.array_equal(shift(image, key=1), shift(image, key=2))
  assert not np.array_equal(shift(image, key=1), shifts.Shift("noise", 2, seed=1)(image, key=1))


def test_framing_shifts():
  image = _chest()
  zoomed, padded = _shifted("zoom", image), _shifted("padding", image)
  assert _decreasing([-_bright_pixels(out) for out in [image, *zoomed]])  # The square grows.
  assert _decreasing([_bright_pixels(out) for out in [image, *padded]])  # It shrinks ...
  assert all(out[0].max() == 0.0 and out[:, 0].max() == 0.0 for out in padded)  # ... in black.
  dot = np.zeros((40, 40), np.float32)
  dot[10, 10] = 1.0
  moved = [np.argwhere(out == 1.0).tolist() for out in _shifted("translate", dot)]
  assert moved == [[[12, 12]], [[14, 14]], [[16, 16]]]  # 5%, 10%, 15% of 40 pixels.


def test_preprocess_shifts_the_decoded_image_before_the_resize(tmp_path):
  path = tmp_path / "x.png"
  PIL.Image.fromarray((_chest(64) * 255).astype(np.uint8)).save(path)
  record = {"path": str(path), "label": 0}
  plain = input_pipeline.Preprocess(16, True, 0.0, 1.0)
  shift = shifts.Shift("translate", 3)
  shifted = input_pipeline.Preprocess(16, True, 0.0, 1.0, shift=shift)
  # 15% of the file's 64 pixels is 10; a shift after the resize would move 2 of 16.
  full = np.asarray(PIL.Image.open(path), np.float32) / 255
  expected = PIL.Image.fromarray(shift(full, 0), mode="F").resize(
      (16, 16), PIL.Image.Resampling.BILINEAR)
  np.testing.assert_allclose(shifted(record)["image"][..., 0], np.asarray(expected), atol=1e-6)
  assert not np.allclose(shifted(record)["image"], plain(record)["image"])
