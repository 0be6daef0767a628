"""TFDS builders for public pneumonia datasets, prepared as ArrayRecord for random access.

Importing this module registers `chest_xray_pneumonia` and `pneumonia_mnist/{28,64,128,224}`
with TFDS. Every example has a gray `image` (PNG or JPEG bytes), a `label` (NORMAL or
PNEUMONIA) and an `id` (its path in the source, or SPLIT/INDEX). `load_tfds_splits` prepares
the configured one on first use and feeds it to grain one example at a time.
"""

import dataclasses
import functools
import io
import pathlib
import shutil
from collections.abc import Iterable

import ml_collections
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import logging

from xray_jax import errors
from xray_jax.data import download, folder, npz, splits
from xray_jax.data.records import Record

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
FILE_FORMAT = "array_record"  # Random access without TensorFlow, through tfds.data_source.


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


class _XrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The features of both builders, and where their archive comes from.

  Constructor arguments (passed through tfds.builder) override the archive's `url` and
  `checksum`, and set the `download_dir`, a `mirror_url` and a `manual_dir` that may hold
  the data instead (chest_xray_pneumonia: the folder layout).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, url: str = "", checksum: str = "", download_dir: str = "",
               mirror_url: str = "", manual_dir: str = "", **kwargs):
    super().__init__(**kwargs)
    self._url, self._checksum = url, checksum
    self._download_dir, self._mirror_url = download_dir, mirror_url
    self._manual_dir = manual_dir

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
    )

  def _fetch(self, url: str, checksum: str, filename: str, manual_hint: str = "") -> pathlib.Path:
    """The archive, from the overriding url/checksum when given, else from `url`/`checksum`."""
    download_dir = self._download_dir or pathlib.Path(self.data_dir_root) / "downloads"
    return download.fetch(self._url or url, self._checksum or checksum, download_dir,
                          self._mirror_url, filename, manual_hint)

  def _log_download_bytes(self) -> None:
    """Replaces TFDS's "Downloading ... Unknown size" line, printed before anything is
    fetched (and wrong when the data comes from a local folder)."""
    logging.info("Preparing %s in %s", self.name, self.data_dir)

  def _generate_examples(self, examples: Iterable[tuple[str, int, bytes]]):
    """(id, label, encoded gray image) -> TFDS examples keyed by id."""
    for example_id, label, image in examples:
      yield example_id, {"image": image, "label": label, "id": example_id}


class ChestXrayPneumonia(_XrayBuilder):
  """Kermany et al. 2018: 5,856 paediatric chest X-rays (JPEG), NORMAL or PNEUMONIA."""

  HOMEPAGE = "https://data.mendeley.com/datasets/rscbjbr9sj/2"
  CITATION = """@article{kermany2018identifying,
  title={Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author={Kermany, Daniel S. and Goldbaum, Michael and others},
  journal={Cell}, volume={172}, number={5}, pages={1122--1131}, year={2018}}"""
  # ChestXRay2017.zip of Mendeley Data rscbjbr9sj v2 ("Labeled Optical Coherence Tomography
  # (OCT) and Chest X-Ray Images for Classification"): chest_xray/{train,test}/{CLASS}/*.jpeg.
  URL = ("https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
         "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded")
  FILENAME = "ChestXRay2017.zip"
  # Not pinned: it could not be checked from here (no internet). One public script pins
  #   sha256:13efc055629733dbab07877f8b3c9f81097840dbcdaa326a8542322c2281ce36
  # Until that is verified, downloads are not checked (their sha256 is logged) unless
  # config.data.checksum pins one.
  CHECKSUM = ""

  def _split_generators(self, dl_manager):
    del dl_manager  # Downloads go through xray_jax.data.download (resume, mirrors).
    manual_dir = pathlib.Path(self._manual_dir)
    root = manual_dir if self._manual_dir and (manual_dir / "train").is_dir() else self._extract()
    dataset = folder.load_folder_dataset(root)
    if dataset.class_names != CLASS_NAMES:
      raise errors.DataError(f"{root}/train: classes {dataset.class_names}; expected "
                             f"{CLASS_NAMES}")
    return {split: self._generate_examples(self._encoded(records, root))
            for split, records in dataset.splits.items()}

  def _extract(self) -> pathlib.Path:
    """Downloads and unpacks the archive; returns the folder that holds train/."""
    archive = self._fetch(self.URL, self.CHECKSUM, self.FILENAME,
                          ", or unpack it (train/{NORMAL,PNEUMONIA}/*.jpeg, optionally val/ "
                          "and test/) and set config.data.dir to that folder")
    target = archive.with_name(archive.name + ".extracted")
    if not target.is_dir():
      partial = target.with_name(target.name + ".tmp")
      shutil.rmtree(partial, ignore_errors=True)
      shutil.unpack_archive(archive, partial, format="zip")
      partial.replace(target)
    roots = [p for p in (target, *sorted(target.glob("*")), *sorted(target.glob("*/*")))
             if (p / "train").is_dir() and "__MACOSX" not in p.parts]  # macOS zip metadata.
    if not roots:
      raise errors.DataError(f"{archive}: no train/ folder in the archive")
    return roots[0]

  @staticmethod
  def _encoded(records: list[Record], root: pathlib.Path):
    """(id, label, bytes): gray files keep their bytes; colour ones become gray PNG."""
    for record in records:
      path = pathlib.Path(record["path"])
      with PIL.Image.open(path) as image:
        if image.mode == "L" and image.format in ("JPEG", "PNG"):
          encoded = path.read_bytes()
        else:
          encoded = _png(np.asarray(image.convert("L")))
      yield path.relative_to(root).as_posix(), record["label"], encoded


class PneumoniaMnist(_XrayBuilder):
  """MedMNIST+ PneumoniaMNIST: Kermany et al.'s images centre-cropped and resized."""

  HOMEPAGE = "https://medmnist.com/"
  CITATION = """@article{medmnistv2,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
         classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and others},
  journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}}"""
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=str(size), description=f"{size}x{size}")
                     for size in (28, 64, 128, 224)]
  # Zenodo record 10519652 (MedMNIST+). MD5s from medmnist's INFO["pneumoniamnist"] (MD5,
  # MD5_64, MD5_128, MD5_224), copied from its info.py; the files were not downloaded here.
  MD5 = {"28": "28209eda62fecd6e6a2d98b1501bb15f", "64": "8f4eceb4ccffa70c672198ea285246c6",
         "128": "05b46931834c231683c68f40c47b2971", "224": "d6a3c71de1b945ea11211b03746c1fe1"}

  def _split_generators(self, dl_manager):
    del dl_manager  # Downloads go through xray_jax.data.download (resume, mirrors).
    size = self.builder_config.name
    filename = "pneumoniamnist.npz" if size == "28" else f"pneumoniamnist_{size}.npz"
    path = self._fetch(f"https://zenodo.org/records/10519652/files/{filename}?download=1",
                       f"md5:{self.MD5[size]}", filename)
    return {split: self._generate_examples(self._encoded(split, images, labels))
            for split, (images, labels) in npz.read_npz(path).items()}

  @staticmethod
  def _encoded(split: str, images: np.ndarray, labels: np.ndarray):
    """(SPLIT/INDEX, label, PNG bytes) for each image."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
      yield f"{split}/{i:05d}", int(label), _png(image)


@dataclasses.dataclass(frozen=True)
class TfdsImage:
  """Example `index` of a prepared split's image, read when numpy asks for it (np.asarray).

  Records hold these rather than pixels, so a split is never all in memory; they pickle
  small, so grain worker processes open the ArrayRecord files themselves.
  """

  builder_dir: str
  split: str
  index: int

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    image = _data_source(self.builder_dir, self.split)[self.index]["image"]
    return image if dtype is None else image.astype(dtype)


@functools.cache
def _data_source(builder_dir: str, split: str):
  return tfds.builder_from_directory(builder_dir).as_data_source(split=split)


def prepare(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The builder of `data.tfds_name`, prepared in `data.tfds_data_dir` unless it already is.

  chest_xray_pneumonia is prepared from `data.dir` when that holds the folder layout.
  """
  tfds_root = pathlib.Path(data_config.tfds_data_dir or tfds.core.constants.DATA_DIR)
  builder = tfds.builder(
      data_config.tfds_name, data_dir=data_config.tfds_data_dir or None, file_format=FILE_FORMAT,
      url=data_config.download_url, checksum=data_config.checksum,
      download_dir=data_config.download_dir, mirror_url=data_config.mirror_url,
      manual_dir=str(pathlib.Path(data_config.dir).expanduser()) if data_config.dir else "")
  # What TFDS may create on the way: removed again, if still empty, when preparing fails.
  builder_dir = pathlib.Path(builder.data_dir)
  extracted = tfds_root / "downloads" / "extracted"
  made = [p for p in {*builder_dir.parents, builder_dir, *extracted.parents, extracted}
          if not p.exists()]
  try:
    builder.download_and_prepare(
        file_format=FILE_FORMAT,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except errors.XrayError:
    download.remove_empty_folders(made)
    raise
  return builder


def load_tfds_splits(
    data_config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> splits.Splits:
  """The prepared dataset's splits; records are NAME/ID paths, labels and TfdsImage.

  Without a val split, validation is carved from train.
  """
  builder = prepare(data_config)
  builder_dir, name = str(builder.data_dir), data_config.tfds_name
  found = {}
  for split in builder.info.splits:
    # Images are left encoded: this pass only needs the ids and labels.
    examples = builder.as_data_source(
        split=split, decoders={"image": tfds.decode.SkipDecoding()})
    found[split] = [{"path": f"{name}/{example['id'].decode()}", "label": int(example["label"]),
                     "image": TfdsImage(builder_dir, split, i)}
                    for i, example in enumerate(examples)]
  class_names = tuple(builder.info.features["label"].names)
  return splits.make_splits(class_names, found, pathlib.Path(name), data_config, workdir)
