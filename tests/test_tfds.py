"""The TFDS builders: prepared from a folder layout, a downloaded archive or an npz mirror."""

import functools
import hashlib
import http.server
import json
import pathlib
import pickle
import shutil
import socket
import threading

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from helpers import make_dataset, tiny_config, write_npz

from xray_jax import config_checks, errors, train
from xray_jax import workdir as workdir_lib
from xray_jax.data import datasets, tfds_builders
from xray_jax.evaluators import evaluation


def _layout(root: pathlib.Path) -> pathlib.Path:
  """train/ and test/ of 10 + 10 images (JPEG and PNG), plus one colour PNG in train."""
  make_dataset(root, per_class=10)
  test = make_dataset(root.with_name("test_source"), per_class=10, seed=1)
  (test / "train").rename(root / "test")
  colour = np.random.default_rng(2).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
  PIL.Image.fromarray(colour).save(root / "train" / "PNEUMONIA" / "colour.png")
  return root


def _tfds_config(tmp_path: pathlib.Path, data_dir: pathlib.Path | str, **data):
  config = tiny_config(data_dir)
  config.data.update({"source": "tfds", "tfds_data_dir": str(tmp_path / "tfds"),
                      "download_dir": str(tmp_path / "downloads"), **data})
  return config


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def file_server(tmp_path):
  """Serves tmp_path/served over HTTP on 127.0.0.1; yields (folder, base URL)."""
  folder = tmp_path / "served"
  folder.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
  handler.log_message = lambda *args: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
  yield folder, f"http://127.0.0.1:{httpd.server_port}"
  httpd.shutdown()
  httpd.server_close()


def _ids(records) -> list[str]:
  return sorted(r["path"].removeprefix("chest_xray_pneumonia/") for r in records)


def _assert_records_match_files(records, root: pathlib.Path):
  for record in records:
    source = root / record["path"].removeprefix("chest_xray_pneumonia/")
    with PIL.Image.open(source) as image:
      expected = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(np.asarray(record["image"]), expected[..., None])
    assert record["label"] == ("PNEUMONIA" in source.parts)


def test_chest_xray_is_prepared_from_the_folder_layout(tmp_path):
  root = _layout(tmp_path / "data")
  config = _tfds_config(tmp_path, root)
  got = datasets.load_splits(config.data, tmp_path / "work")
  train.record_split(tmp_path / "work", got)
  assert got.class_names == ("NORMAL", "PNEUMONIA")
  assert (len(got.train), len(got.val), len(got.test)) == (16, 5, 20)
  _assert_records_match_files(got.train + got.val + got.test, root)
  assert "train/PNEUMONIA/colour.png" in _ids(got.train + got.val)  # Converted to gray.
  # No val/ folder: validation is carved from train (stratified) and saved.
  saved = json.loads((tmp_path / "work" / workdir_lib.SPLIT).read_text())["val"]
  assert saved == _ids(got.val)
  assert sorted(r["label"] for r in got.val) == [0, 0, 1, 1, 1]
  # The prepared files are read back through tfds.data_source as well.
  test = tfds.data_source("chest_xray_pneumonia", split="test", data_dir=str(tmp_path / "tfds"))
  assert sorted(e["id"].decode() for e in test) == _ids(got.test)


def test_tfds_image_pickles_small_and_reopens_the_files(tmp_path):
  root = _layout(tmp_path / "data")
  record = datasets.load_splits(_tfds_config(tmp_path, root).data, tmp_path / "work").test[3]
  payload = pickle.dumps(record["image"])
  assert len(payload) < 500
  tfds_builders._data_source.cache_clear()  # As in a fresh grain worker process.
  np.testing.assert_array_equal(np.asarray(pickle.loads(payload)), np.asarray(record["image"]))


def test_chest_xray_is_downloaded_and_unpacked_without_a_data_dir(tmp_path, file_server):
  folder, url = file_server
  _layout(tmp_path / "archive" / "chest_xray")
  archive = shutil.make_archive(str(folder / "ChestXRay2017"), "zip", tmp_path / "archive")
  checksum = "sha256:" + hashlib.sha256(pathlib.Path(archive).read_bytes()).hexdigest()
  config = _tfds_config(tmp_path, "", download_url=f"{url}/ChestXRay2017.zip",
                        checksum=checksum)
  got = datasets.load_splits(config.data, tmp_path / "work")
  assert (len(got.train) + len(got.val), len(got.test)) == (21, 20)
  assert (tmp_path / "downloads" / "ChestXRay2017.zip").is_file()
  _assert_records_match_files(got.test, tmp_path / "archive" / "chest_xray")


@pytest.mark.parametrize("source", ["tfds", "auto"])
def test_offline_without_data_stops_with_instructions_and_leaves_nothing(
    tmp_path, source, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = _tfds_config(tmp_path, "", source=source, download_dir="data/downloads",
                        download_url=f"http://127.0.0.1:{_closed_port()}/file_downloaded")
  with pytest.raises(errors.DataError) as e:
    datasets.load_splits(config.data, tmp_path / "work")
  message = str(e.value)  # Absolute paths: where to put what.
  assert f"put ChestXRay2017.zip at {tmp_path}/data/downloads/ChestXRay2017.zip" in message
  assert message.endswith("and set config.data.dir to that folder")
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # No empty folders left.


@pytest.mark.parametrize("source", ["tfds", "auto", "folder"])
def test_a_missing_data_dir_is_an_error_not_a_download(tmp_path, source, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = _tfds_config(tmp_path, "chest_xrya", source=source, download_dir="data/downloads",
                        download_url=f"http://127.0.0.1:{_closed_port()}/file_downloaded")
  with pytest.raises(errors.DataError, match=rf"config.data.dir='chest_xrya': no such "
                     rf"directory \({tmp_path}/chest_xrya\)"):
    datasets.load_splits(config.data, tmp_path / "work")
  assert list(tmp_path.iterdir()) == []


def test_auto_reads_a_folder_layout_in_place(tmp_path):
  root = _layout(tmp_path / "data")
  got = datasets.load_splits(_tfds_config(tmp_path, root, source="auto").data, tmp_path / "work")
  assert (len(got.train) + len(got.val), len(got.test)) == (21, 20)
  assert all("image" not in r and pathlib.Path(r["path"]).is_file() for r in got.test)
  assert not (tmp_path / "tfds").exists()


def test_pneumonia_mnist_is_prepared_from_an_npz_mirror(tmp_path):
  expected = write_npz(tmp_path / "mirror" / "pneumoniamnist.npz")
  md5 = hashlib.md5((tmp_path / "mirror" / "pneumoniamnist.npz").read_bytes()).hexdigest()
  config = _tfds_config(tmp_path, "", tfds_name="pneumonia_mnist/28",
                        mirror_url=str(tmp_path / "mirror"), checksum=f"md5:{md5}")
  got = datasets.load_splits(config.data, tmp_path / "work")
  assert (len(got.train), len(got.val), len(got.test)) == (20, 20, 20)  # The file's own val.
  for split in ("train", "val", "test"):
    source = tfds.data_source("pneumonia_mnist/28", split=split, data_dir=str(tmp_path / "tfds"))
    images, labels = expected[split]
    assert len(source) == len(images)
    for example in source:
      index = int(example["id"].decode().split("/")[1])
      np.testing.assert_array_equal(example["image"][..., 0], images[index])
      assert example["label"] == labels[index]


def test_pneumonia_mnist_checks_the_published_md5_by_default(tmp_path):
  write_npz(tmp_path / "mirror" / "pneumoniamnist_64.npz", size=64)
  config = _tfds_config(tmp_path, "", tfds_name="pneumonia_mnist/64",
                        mirror_url=str(tmp_path / "mirror"))
  with pytest.raises(errors.DataError, match="expected 8f4eceb4ccffa70c672198ea285246c6"):
    datasets.load_splits(config.data, tmp_path / "work")


@pytest.mark.slow
def test_training_on_a_tfds_dataset(tmp_path):
  root = make_dataset(tmp_path / "data", per_class=16)
  workdir = tmp_path / "work"
  config = _tfds_config(tmp_path, root)
  train.train_and_evaluate(config, str(workdir))
  assert json.loads((workdir / "classes.json").read_text()) == ["NORMAL", "PNEUMONIA"]
  report = evaluation.evaluate_checkpoint(workdir, "val", "latest", config.evaluation)
  assert report["at_0.5"]["num_examples"] == 8  # val_fraction 0.25 of 2 x 16 images.


def test_config_check_names_an_unknown_tfds_name(tmp_path):
  registered = {builder.name for builder in tfds_builders._XrayBuilder.__subclasses__()}
  assert registered == set(datasets.TFDS_BUILDERS)  # What the check accepts, TFDS can load.
  config = _tfds_config(tmp_path, tmp_path, tfds_name="mnist")
  with pytest.raises(errors.ConfigError, match="config.data.tfds_name='mnist': expected one of"):
    config_checks.check_config(config)
