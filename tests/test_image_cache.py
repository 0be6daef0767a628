"""The shared image cache: rows equal the loaded images, workers fill it, its file goes away,
and a killed builder's folder with the next build."""

import gc
import os
import pathlib
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO_ROOT
from test_data import data_config

from xray_jax import errors, input_pipeline
from xray_jax.data import folder, image_cache


def _records_and_load(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"][:12]
  preprocess = input_pipeline.Preprocess.from_config(data_config(dataset_dir, intensity="clahe"))
  return records, preprocess.load


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rows_are_the_loaded_images_in_order(dataset_dir, num_workers):
  records, load = _records_and_load(dataset_dir)
  cache = image_cache.ImageCache.build(records, load, (16, 16), num_workers, read_threads=2)
  copy = pickle.loads(pickle.dumps(cache))  # What a grain worker gets.
  assert copy.path == cache.path
  for i, record in enumerate(records):
    expected = load(record).astype(np.float16)
    np.testing.assert_array_equal(cache[i], expected)
    np.testing.assert_array_equal(copy[i], expected)


def test_file_is_deleted_with_the_cache_that_built_it(dataset_dir):
  records, load = _records_and_load(dataset_dir)
  cache = image_cache.ImageCache.build(records, load, (16, 16), 0, read_threads=1)
  folder_path = cache.path.parent
  copy = pickle.loads(pickle.dumps(cache))
  del copy
  gc.collect()
  assert cache.path.is_file()  # A worker's copy owns nothing.
  del cache
  gc.collect()
  assert not folder_path.exists()


def test_corrupt_image_stops_the_build_naming_the_file(dataset_dir, tmp_path):
  records, load = _records_and_load(dataset_dir)
  broken = tmp_path / "broken.jpeg"
  broken.write_bytes(b"\xff\xd8 not a jpeg")
  with pytest.raises(errors.DataError, match="broken.jpeg"):
    image_cache.ImageCache.build([*records, {"path": str(broken), "label": 0}], load, (16, 16),
                                 2, read_threads=1)


def test_workers_share_the_cache_and_give_the_in_process_batches(dataset_dir):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]
  batches = []
  for workers in (0, 2):
    config = data_config(dataset_dir, cache_images=True, intensity="clahe", num_workers=workers)
    iterator = iter(input_pipeline.create_train_dataset(records, config, 8, seed=0))
    batches.append([next(iterator) for _ in range(8)])  # Over an epoch (6 batches).
  for a, b in zip(*batches, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_cache_file_goes_to_data_cache_dir(dataset_dir, tmp_path):
  records = folder.load_folder_dataset(dataset_dir).splits["train"]
  config = data_config(dataset_dir, cache_images=True, cache_dir=str(tmp_path / "cache"))
  (tmp_path / "cache").mkdir()
  iterator = iter(input_pipeline.create_train_dataset(records, config, 8, seed=0))
  next(iterator)
  assert sorted(p.name for p in (tmp_path / "cache").glob("xray_jax_images_*/*")) == [
      "images.npy", "owner.lock"]


_BUILD_AND_WAIT = """if True:
    import sys, time
    import numpy as np
    from xray_jax.data import image_cache
    cache = image_cache.ImageCache.build(
        [{"path": "a", "label": 1}], lambda record: np.ones((4, 4)), (4, 4), 0, 1, sys.argv[1])
    print(cache.path, flush=True)
    time.sleep(300)
"""


def _backdate(folder: pathlib.Path, seconds: float) -> None:
  then = time.time() - seconds
  os.utime(folder, (then, then))


def test_the_next_build_removes_the_folder_of_a_killed_builder_only(tmp_path):
  directory, load = tmp_path / "cache", lambda record: np.zeros((4, 4))
  directory.mkdir()
  killed = subprocess.Popen([sys.executable, "-c", _BUILD_AND_WAIT, str(directory)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  orphan = pathlib.Path(killed.stdout.readline().strip()).parent
  killed.kill()  # SIGKILL: no clean-up ran.
  killed.wait()
  assert (orphan / "images.npy").is_file()
  live = image_cache.ImageCache.build([{"path": "b", "label": 0}], load, (4, 4), 0, 1,
                                      str(directory))
  assert orphan.is_dir()  # Made within the last minute: its builder may not have locked it.
  stranger = directory / f"{image_cache.PREFIX}without_a_lock"
  stranger.mkdir()
  for made in (orphan, live.path.parent, stranger):
    _backdate(made, 120)
  again = image_cache.ImageCache.build([{"path": "c", "label": 0}], load, (4, 4), 0, 1,
                                       str(directory))
  assert not orphan.exists()
  assert live.path.is_file() and again.path.is_file() and stranger.is_dir()
