"""Folder discovery, the validation split, decoding, augmentation and the grain pipeline."""

import json
import pathlib

import ml_collections
import numpy as np
import PIL.Image
import pytest
from helpers import no_augment

from xray_jax import errors, input_pipeline, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import augment, datasets, folder, images, splits


def data_config(root, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      source="folder", dir=str(root), label_rules="", image_size=16, grayscale=True,
      mean=0.5, std=0.25, dicom_multiframe="first",
      val_fraction=0.25, split_seed=0, group_pattern=r"(person\d+)_", num_workers=0,
      read_threads=1, prefetch=2, balanced_sampling=False, cache_images=False,
      augment=dict(rotation_degrees=10.0, scale_min=0.9, scale_max=1.1,
                   translate_fraction=0.1, hflip_prob=0.5, brightness=0.1, contrast=0.1,
                   crop_area_min=1.0, gamma=0.0, blur_sigma=0.0, noise_std=0.0)))
  config.update(overrides)
  return config


def test_folder_layout_classes_and_splits(dataset_dir):
  (dataset_dir / "test" / "NORMAL").mkdir(parents=True)
  (dataset_dir / "test" / "PNEUMONIA").mkdir(parents=True)
  for name in ("NORMAL", "PNEUMONIA"):
    for src in sorted((dataset_dir / "train" / name).iterdir())[:2]:
      (dataset_dir / "test" / name / src.name).write_bytes(src.read_bytes())
  (dataset_dir / "train" / "NORMAL" / "notes.txt").write_text("not an image")
  dataset = folder.load_folder_dataset(dataset_dir)
  assert dataset.class_names == ("NORMAL", "PNEUMONIA")
  assert len(dataset.splits["train"]) == 48 and len(dataset.splits["test"]) == 4
  assert "val" not in dataset.splits
  assert {r["label"] for r in dataset.splits["train"] if "/PNEUMONIA/" in r["path"]} == {1}


def test_missing_directory_and_empty_class_are_named(tmp_path, dataset_dir):
  with pytest.raises(errors.DataError, match=str(tmp_path / "nowhere" / "train")):
    folder.load_folder_dataset(tmp_path / "nowhere")
  for path in (dataset_dir / "train" / "NORMAL").iterdir():
    path.unlink()
  with pytest.raises(errors.DataError, match=r"train/NORMAL: no images"):
    folder.load_folder_dataset(dataset_dir)


def test_stratified_split_is_seeded_and_keeps_class_ratio():
  records = [{"path": f"{i}.png", "label": int(i < 30)} for i in range(100)]
  groups = [r["path"] for r in records]  # One image per group: a split per image.
  train, val = splits.stratified_split(records, groups, 0.1, seed=3)
  assert len(val) == 10 and sum(r["label"] for r in val) == 3
  assert {r["path"] for r in train}.isdisjoint(r["path"] for r in val)
  assert splits.stratified_split(records, groups, 0.1, seed=3)[1] == val
  assert splits.stratified_split(records, groups, 0.1, seed=4)[1] != val


def test_split_is_saved_in_the_workdir_and_reused(dataset_dir, tmp_path):
  workdir = tmp_path / "work"
  first = datasets.load_splits(data_config(dataset_dir), workdir)
  train.record_split(workdir, first)
  saved = json.loads((workdir / workdir_lib.SPLIT).read_text())
  assert len(saved["val"]) == len(first.val) == 12
  # A different seed does not move a split already recorded for this workdir.
  again = datasets.load_splits(data_config(dataset_dir, split_seed=7), workdir)
  assert again.val == first.val and again.train == first.train
  other = datasets.load_splits(data_config(dataset_dir, split_seed=7), tmp_path / "other")
  assert other.val != first.val


def test_load_image_resizes_to_gray_unit_range(tmp_path):
  path = tmp_path / "colour.png"
  PIL.Image.fromarray(np.full((40, 60, 3), 255, np.uint8)).save(path)
  image = images.load_image(str(path), 16)
  assert image.shape == (16, 16) and image.dtype == np.float32
  np.testing.assert_allclose(image, 1.0)


def test_sixteen_bit_png_keeps_its_depth(tmp_path):
  path = tmp_path / "deep.png"
  pixels = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
  PIL.Image.fromarray(pixels).save(path)
  image = images.load_image(str(path), 32)
  np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-6)
  assert len(np.unique(image)) > 256  # Not clipped or quantized to 8 bits.


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 not really a jpeg"])
def test_corrupt_image_error_names_the_file(tmp_path, content):
  path = tmp_path / "broken.jpeg"
  path.write_bytes(content)
  with pytest.raises(errors.DataError, match="broken.jpeg: cannot read image"):
    images.load_image(str(path), 16)


def test_truncated_jpeg_error_names_the_file(tmp_path):
  path = tmp_path / "cut.jpeg"
  PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
  path.write_bytes(path.read_bytes()[:300])
  with pytest.raises(errors.DataError, match="cut.jpeg"):
    images.load_image(str(path), 16)


def _point_image(size=9, row=1, col=4):
  image = np.zeros((size, size), np.float32)
  image[row, col] = 1.0
  return image


def test_identity_augmentation_changes_nothing():
  image = np.random.default_rng(0).uniform(size=(16, 16)).astype(np.float32)
  out = augment.augment_image(image, no_augment(), np.random.default_rng(1))
  np.testing.assert_allclose(out, image, atol=1e-6)


def test_affine_geometry_rotates_about_the_centre_and_shifts():
  warp = lambda *args: np.asarray(PIL.Image.fromarray(_point_image(), mode="F").transform(
      (9, 9), PIL.Image.Transform.AFFINE, augment._inverse_affine(9, *args),
      resample=PIL.Image.Resampling.BILINEAR))
  assert np.argwhere(warp(90, 1, 0, 0) > 0.5).tolist() == [[4, 7]]
  assert np.argwhere(warp(180, 1, 0, 0) > 0.5).tolist() == [[7, 4]]
  assert np.argwhere(warp(0, 1, 2, 0) > 0.5).tolist() == [[1, 6]]
  assert np.argwhere(warp(0, 1, 0, 1) > 0.5).tolist() == [[2, 4]]


def _extent(image: np.ndarray) -> tuple[int, int]:
  rows, cols = np.nonzero(image > 0.5)
  return int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1


def test_stretch_changes_the_proportions_and_keeps_the_area():
  box = np.zeros((64, 64), np.float32)
  box[22:42, 12:52] = 1.0  # 20 rows, 40 columns.
  assert augment._inverse_affine(64, 7, 1.1, 2, -3, 1.0) == augment._inverse_affine(
      64, 7, 1.1, 2, -3)
  taller = PIL.Image.fromarray(box, mode="F").transform(
      (64, 64), PIL.Image.Transform.AFFINE, augment._inverse_affine(64, 0, 1, 0, 0, 1.25),
      resample=PIL.Image.Resampling.BILINEAR)
  height, width = _extent(np.asarray(taller))
  assert abs(height - 20 * 1.25) <= 1 and abs(width - 40 / 1.25) <= 1
  ratios = []
  for seed in range(8):
    out = augment.augment_image(box, no_augment(stretch=0.2), np.random.default_rng(seed))
    height, width = _extent(out)
    ratios.append(height / width)
    assert abs(height * width - 800) < 0.1 * 800
    assert np.exp(-0.2) ** 2 * 0.5 - 0.06 <= ratios[-1] <= np.exp(0.2) ** 2 * 0.5 + 0.06
  assert min(ratios) < 0.45 and max(ratios) > 0.55  # Both ways, not only one.


def test_flip_and_intensity_augmentations():
  image = np.linspace(0, 1, 81, dtype=np.float32).reshape(9, 9)
  flipped = augment.augment_image(image, no_augment(hflip_prob=1.0), np.random.default_rng(0))
  np.testing.assert_allclose(flipped, image[:, ::-1], atol=1e-6)
  brighter = augment.augment_image(image * 0.5, no_augment(brightness=0.3),
                                   np.random.default_rng(0))
  assert not np.allclose(brighter, image * 0.5)
  assert brighter.min() >= 0 and brighter.max() <= 1


def test_random_resized_crop_zooms_into_part_of_the_image():
  ramp = np.linspace(0, 1, 64, dtype=np.float32)[None, :].repeat(64, axis=0)
  for seed in range(5):
    crop = augment.random_resized_crop(ramp, 0.25, np.random.default_rng(seed))
    span = crop[:, -1] - crop[:, 0]
    assert crop.shape == ramp.shape and 0.4 < span.mean() < 1.0
    np.testing.assert_array_equal(
        crop, augment.random_resized_crop(ramp, 0.25, np.random.default_rng(seed)))
  whole = augment.augment_image(ramp, no_augment(), np.random.default_rng(0))
  assert not np.allclose(whole, augment.augment_image(ramp, no_augment(crop_area_min=0.5),
                                                      np.random.default_rng(0)))


def test_gamma_blur_and_noise_augmentations():
  rng = np.random.default_rng(0)
  image = np.clip(0.5 + 0.2 * rng.normal(size=(32, 32)), 0.05, 0.95).astype(np.float32)
  detail = lambda x: np.abs(np.diff(x)).mean()
  blurred_detail = []
  for seed in range(4):
    out = augment.augment_image(image, no_augment(gamma=0.3), np.random.default_rng(seed))
    gammas = np.log(out) / np.log(image)  # One gamma for every pixel, within the range.
    assert np.ptp(gammas) < 1e-3 and np.exp(-0.3) <= gammas.mean() <= np.exp(0.3)
    blurred = augment.augment_image(image, no_augment(blur_sigma=0.05),
                                    np.random.default_rng(seed))
    blurred_detail.append(detail(blurred))  # Sigma may be drawn near 0: no change.
    assert blurred_detail[-1] <= detail(image) + 1e-6
    noisy = augment.augment_image(image, no_augment(noise_std=0.1), np.random.default_rng(seed))
    assert 0 < (noisy - image).std() <= 0.11
  assert np.mean(blurred_detail) < 0.8 * detail(image)
  # A brightness ramp: one slope per image, offsets in proportion to the row's height.
  slopes = []
  for seed in range(4):
    mid = 0.3 + 0.4 * image  # Far enough from 0 and 1 that no ramp clips.
    ramped = augment.augment_image(mid, no_augment(intensity_ramp=0.2),
                                   np.random.default_rng(seed)) - mid
    row_slopes = np.diff(ramped.mean(axis=1)) * image.shape[0]
    assert np.ptp(row_slopes) < 1e-4 and abs(row_slopes.mean()) <= 0.2
    slopes.append(row_slopes.mean())
  assert np.ptp(slopes) > 0.05
  # A step that is off draws no random numbers: the others are unchanged.
  first = augment.augment_image(image, no_augment(brightness=0.2), np.random.default_rng(7))
  again = augment.augment_image(image, no_augment(brightness=0.2, noise_std=0.0),
                                np.random.default_rng(7))
  np.testing.assert_array_equal(first, again)


def _take(dataset, count):
  iterator = iter(dataset)
  return [next(iterator) for _ in range(count)]


def test_train_pipeline_is_deterministic_and_shuffles(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]
  config = data_config(dataset_dir)
  first = _take(input_pipeline.create_train_dataset(records, config, 8, seed=0), 7)
  second = _take(input_pipeline.create_train_dataset(records, config, 8, seed=0), 7)
  other = _take(input_pipeline.create_train_dataset(records, config, 8, seed=1), 7)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])
  assert first[0]["image"].shape == (8, 16, 16, 1) and first[0]["image"].dtype == np.float32
  # Epochs 1 and 2 (48 images = 6 batches each) are both complete and ordered differently.
  labels = np.concatenate([b["label"] for b in first[:6]])
  assert labels.sum() == 24
  assert not np.array_equal(first[0]["image"], first[6]["image"])


def test_cached_images_give_the_same_batches_and_load_once(dataset_dir, monkeypatch):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]  # 48: 6 batches an epoch.
  loads = []
  load = input_pipeline.Preprocess.load
  monkeypatch.setattr(input_pipeline.Preprocess, "load",
                      lambda self, record: loads.append(record["path"]) or load(self, record))
  batches = {}
  for cache in (True, False):  # (An iterator's prefetching goes on after the last batch.)
    loads.clear()
    config = data_config(dataset_dir, cache_images=cache, intensity="clahe")
    batches[cache] = _take(input_pipeline.create_train_dataset(records, config, 8, seed=0), 18)
    if cache:  # Three epochs, each image loaded once. (An earlier test's iterators may
      # still prefetch its own images in their threads: those are not this test's.)
      ours = [path for path in loads if path.startswith(str(dataset_dir))]
      assert sorted(ours) == sorted(r["path"] for r in records)
    else:
      assert len(loads) >= 18 * 8
  for a, b in zip(batches[False], batches[True], strict=True):  # Kept as float16.
    assert b["image"].dtype == np.float32
    np.testing.assert_allclose(b["image"], a["image"], rtol=0, atol=2.5e-4 / 0.25)
    assert not np.array_equal(b["image"], a["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_balanced_sampling_evens_out_the_classes(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]
  records = [r for r in records if r["label"] == 1] + [
      r for r in records if r["label"] == 0][:5]  # 24 pneumonia, 5 normal.
  balanced = input_pipeline.class_balanced(records, seed=0)
  normal = [r["path"] for r in balanced if r["label"] == 0]
  assert len(balanced) == 48 and len(normal) == 24
  assert sorted(set(normal)) == sorted(r["path"] for r in records if r["label"] == 0)
  assert max(normal.count(p) for p in normal) - min(normal.count(p) for p in normal) == 1
  assert input_pipeline.class_balanced(records, seed=0) == balanced
  config = data_config(dataset_dir, balanced_sampling=True)
  labels = np.concatenate([b["label"] for b in _take(
      input_pipeline.create_train_dataset(records, config, 8, seed=0), 12)])
  assert abs(labels.mean() - 0.5) < 0.1  # Without it: 24 / 29 = 0.83.
  plain = np.concatenate([b["label"] for b in _take(
      input_pipeline.create_train_dataset(records, data_config(dataset_dir), 8, seed=0), 12)])
  assert plain.mean() > 0.75


def test_process_shards_make_up_the_global_batch(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]
  config = data_config(dataset_dir)
  whole = _take(input_pipeline.create_train_dataset(records, config, 8, seed=0), 3)
  shards = [_take(input_pipeline.create_train_dataset(records, config, 8, 0, p, 2), 3)
            for p in range(2)]
  for step in range(3):  # Process p holds rows [4p, 4p + 4) of each global batch.
    for key in ("image", "label"):
      merged = np.concatenate([shards[p][step][key] for p in range(2)])
      np.testing.assert_array_equal(merged, whole[step][key])


def test_augmentation_applies_to_train_only(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"][:8]
  config = data_config(dataset_dir)
  preprocess = input_pipeline.Preprocess.from_config(config)
  (eval_batch,) = list(input_pipeline.create_eval_dataset(records, config, 8))
  for record, image in zip(records, eval_batch["image"], strict=True):
    np.testing.assert_allclose(image, preprocess(record)["image"])
  np.testing.assert_array_equal(eval_batch["label"], [r["label"] for r in records])
  no_aug = data_config(dataset_dir, augment=no_augment().to_dict())
  plain = _take(input_pipeline.create_train_dataset(records, no_aug, 8, seed=0), 1)[0]
  augmented = _take(input_pipeline.create_train_dataset(records, config, 8, seed=0), 1)[0]
  np.testing.assert_array_equal(plain["label"], augmented["label"])
  assert not np.allclose(plain["image"], augmented["image"])
  unaugmented = np.stack([preprocess(r)["image"] for r in records])
  for image in plain["image"]:  # With zero strengths, training sees the eval images.
    assert np.abs(unaugmented - image).max(axis=(1, 2, 3)).min() < 1e-5


def test_augmentation_on_device_leaves_the_pipeline_unaugmented(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"][:8]
  config = data_config(dataset_dir, augment_on="device")
  preprocess = input_pipeline.Preprocess.from_config(config)
  loaded = np.stack([preprocess.load(r) for r in records])
  (batch,) = _take(input_pipeline.create_train_dataset(records, config, 8, seed=0), 1)
  assert batch["image"].shape == (8, 16, 16) and batch["image"].dtype == np.float16
  for image in batch["image"]:  # Each is one of the loaded images, neither augmented nor
    # normalized, at float16's precision.
    assert np.abs(loaded - image).max(axis=(1, 2)).min() < 5e-4


def test_eval_pipeline_pads_to_whole_batches_with_a_mask(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"][:10]
  batches = list(input_pipeline.create_eval_dataset(records, data_config(dataset_dir), 8))
  assert len(batches) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  assert mask.tolist() == [1.0] * 10 + [0.0] * 6
  assert index[:10].tolist() == list(range(10))


def test_three_channel_input_replicates_gray(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"][:2]
  example = input_pipeline.Preprocess.from_config(
      data_config(dataset_dir, grayscale=False))(records[0])
  assert example["image"].shape == (16, 16, 3)
  np.testing.assert_array_equal(example["image"][..., 0], example["image"][..., 2])


def test_worker_processes_give_the_same_batches_and_resume(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]
  in_process = _take(input_pipeline.create_train_dataset(
      records, data_config(dataset_dir), 8, seed=0), 5)
  config = data_config(dataset_dir, num_workers=2)
  iterator = iter(input_pipeline.create_train_dataset(records, config, 8, seed=0))
  first = [next(iterator) for _ in range(3)]
  state = iterator.get_state()
  resumed = iter(input_pipeline.create_train_dataset(records, config, 8, seed=0))
  resumed.set_state(state)
  rest = [next(resumed) for _ in range(2)]
  for expected, actual in zip(in_process, first + rest, strict=True):
    np.testing.assert_array_equal(expected["image"], actual["image"])
    np.testing.assert_array_equal(expected["label"], actual["label"])


def test_make_paths_absolute_resolves_local_paths_only(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  data = ml_collections.ConfigDict(dict(
      dir="images", npz_path="https://example.org/pneumoniamnist.npz", tfds_data_dir="",
      download_dir="~/downloads", labels_csv="labels.csv"))
  datasets.make_paths_absolute(data)
  assert data.dir == str(tmp_path / "images")
  assert data.npz_path == "https://example.org/pneumoniamnist.npz"
  assert data.tfds_data_dir == ""
  assert data.download_dir == str(pathlib.Path("~/downloads").expanduser())
  assert data.labels_csv == "labels.csv"  # Relative to data.dir, by design.
