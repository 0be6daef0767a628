"""Shared fixtures: 8 CPU devices, parsed absl flags, and small generated datasets."""

import pathlib

import jax

# Every test sees 8 devices, so the trainer's sharded path is what the suite exercises.
jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_image(path: pathlib.Path, label: int, rng: np.random.Generator, size: int = 32):
  """A gray image whose class is a bright square on the left (0) or right (1) half."""
  pixels = rng.uniform(0, 60, size=(size, size))
  row = rng.integers(4, size - 12)
  col = rng.integers(2, size // 2 - 10) + (size // 2 if label else 0)
  pixels[row:row + 8, col:col + 8] = 230
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_dataset(root: pathlib.Path, per_class: int = 24, classes=("NORMAL", "PNEUMONIA"),
                 seed: int = 0) -> pathlib.Path:
  """ROOT/train/{CLASS}/*.{png,jpeg} with `per_class` images of each class."""
  rng = np.random.default_rng(seed)
  for label, name in enumerate(classes):
    for i in range(per_class):
      suffix = ".png" if i % 2 else ".jpeg"
      write_image(root / "train" / name / f"img{i:03d}{suffix}", label, rng)
  return root


@pytest.fixture
def dataset_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  return make_dataset(tmp_path / "data")
