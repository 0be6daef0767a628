"""The npz source: MedMNIST-style arrays read directly, records carrying image arrays."""

import json
import pathlib

import numpy as np
import PIL.Image
import pytest
from helpers import tiny_config, write_npz

from xray_jax import errors, input_pipeline, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets, images
from xray_jax.evaluators import evaluation


def npz_config(path: pathlib.Path):
  config = tiny_config(path.parent)
  config.data.source = "npz"
  config.data.npz_path = str(path)
  return config


def test_records_carry_the_images_of_each_split(tmp_path):
  expected = write_npz(tmp_path / "p.npz")
  got = datasets.load_splits(npz_config(tmp_path / "p.npz").data, tmp_path / "work")
  assert got.class_names == ("NORMAL", "PNEUMONIA")
  for split, records in (("train", got.train), ("val", got.val), ("test", got.test)):
    images, labels = expected[split]
    np.testing.assert_array_equal(np.stack([r["image"] for r in records]), images)
    assert [r["label"] for r in records] == labels.tolist()
    assert records[3]["path"] == f"{tmp_path / 'p.npz'}/{split}/00003"
  assert not (tmp_path / "work" / workdir_lib.SPLIT).exists()  # The file's own val split.


def test_without_val_arrays_validation_is_carved_and_saved(tmp_path):
  write_npz(tmp_path / "p.npz", val=False)
  config = npz_config(tmp_path / "p.npz")
  first = datasets.load_splits(config.data, tmp_path / "work")
  train.record_split(tmp_path / "work", first)
  assert (len(first.train), len(first.val)) == (16, 4)
  assert sorted(r["label"] for r in first.val) == [0, 0, 1, 1]  # Stratified.
  saved = json.loads((tmp_path / "work" / workdir_lib.SPLIT).read_text())["val"]
  assert saved == sorted(r["path"].split("p.npz/")[1] for r in first.val)
  config.data.split_seed = 1  # Ignored: the saved split is reused.
  again = datasets.load_splits(config.data, tmp_path / "work")
  assert [r["path"] for r in again.val] == [r["path"] for r in first.val]


def test_labels_beyond_the_class_names_are_reported(tmp_path):
  write_npz(tmp_path / "p.npz")
  config = npz_config(tmp_path / "p.npz")
  config.data.class_names = "A,B"
  labels = np.load(tmp_path / "p.npz")
  np.savez(tmp_path / "p.npz", **{**labels, "train_labels": labels["train_labels"] + 1})
  with pytest.raises(errors.DataError, match=r"train_labels span \[1, 2\]"):
    datasets.load_splits(config.data, tmp_path / "work")


def test_file_without_train_images_is_reported(tmp_path):
  np.savez(tmp_path / "p.npz", images=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(errors.DataError, match="no train_images array"):
    datasets.load_splits(npz_config(tmp_path / "p.npz").data, tmp_path / "work")


def test_array_record_preprocesses_like_the_same_image_file(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, size=(28, 28), dtype=np.uint8)
  PIL.Image.fromarray(pixels).save(tmp_path / "x.png")
  preprocess = input_pipeline.Preprocess(16, True, 0.5, 0.25)
  from_file = preprocess({"path": str(tmp_path / "x.png"), "label": 1})["image"]
  assert from_file.shape == (16, 16, 1)
  for image in (pixels, pixels[..., None], np.repeat(pixels[..., None], 3, -1)):
    np.testing.assert_array_equal(preprocess({"path": "x", "label": 1, "image": image})["image"],
                                  from_file)
  as_float = preprocess({"path": "x", "label": 1, "image": pixels / np.float32(255)})["image"]
  np.testing.assert_allclose(as_float, from_file, atol=0.02)


def test_resize_gray_rejects_other_shapes():
  with pytest.raises(errors.DataError, match=r"expected \[H, W\]"):
    images.array_picture(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.slow
def test_training_on_an_npz_file(tmp_path):
  write_npz(tmp_path / "p.npz", per_class=16)
  config = npz_config(tmp_path / "p.npz")
  train.train_and_evaluate(config, str(tmp_path / "work"))
  assert json.loads((tmp_path / "work" / "classes.json").read_text()) == ["NORMAL", "PNEUMONIA"]
  report = evaluation.evaluate_checkpoint(tmp_path / "work", "test", "latest", config.evaluation)
  assert report["at_0.5"]["num_examples"] == 32  # The file's test arrays: 16 per class.
  assert report["data"] == {"source": "npz", "npz_path": str(tmp_path / "p.npz")}
