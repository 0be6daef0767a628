"""grain pipelines: records -> decoded, augmented, normalized per-process batches."""

import dataclasses
import zlib
from collections.abc import Sequence

import grain
import ml_collections
import numpy as np
import PIL.Image

from xray_jax import labels
from xray_jax.data import augment, device_augment, image_cache, images, intensity, shifts, workers
from xray_jax.data.records import Record


def input_shape(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """The shape of one model input, [size, size, channels], that preprocessing produces."""
  size = data_config.image_size
  return (size, size, 1 if data_config.grayscale else 3)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Turns a record into a model input: decode, resize, (augment), normalize."""

  image_size: int
  grayscale: bool
  mean: float
  std: float
  dicom_multiframe: str = "first"
  shift: shifts.Shift | None = None  # An acquisition shift (the stress test), or none.
  intensity: str = "none"  # Per-image standardization: intensity.METHODS.
  clahe_clip_limit: float = 0.01

  @classmethod
  def from_config(cls, data_config: ml_collections.ConfigDict,
                  shift: shifts.Shift | None = None) -> "Preprocess":
    # Runs saved before intensity standardization existed have no such fields.
    return cls(data_config.image_size, data_config.grayscale, data_config.mean,
               data_config.std, data_config.dicom_multiframe, shift,
               data_config.get("intensity", "none"), data_config.get("clahe_clip_limit", 0.01))

  def __call__(self, record: Record, augment_config=None, rng=None) -> dict[str, np.ndarray]:
    return self.finish(self.load(record), record["label"], augment_config, rng)

  def finish(self, image: np.ndarray, label: labels.Label, augment_config=None,
             rng=None) -> dict[str, np.ndarray]:
    """A loaded image (see `load`), augmented if `augment_config` is given, normalized, and
    its label (`labels.batch_label`)."""
    if augment_config is not None:
      image = augment.augment_image(image, augment_config, rng)
    return {"image": self.normalize(image), "label": labels.batch_label(label)}

  def load(self, record: Record) -> np.ndarray:
    """The record's gray image as float32 [image_size, image_size] in [0, 1], standardized;
    the shift, if any, acts on the decoded image at its own size, before the resize."""
    if "image" in record:  # npz and TFDS records carry their pixels (or a lazy TfdsImage).
      picture = images.array_picture(np.asarray(record["image"]))
    else:
      picture = images.decode_file(record["path"], self.dicom_multiframe)
    if self.shift is not None:
      key = zlib.crc32(record["path"].encode())  # Noise tied to the image, not the order.
      picture = PIL.Image.fromarray(self.shift(images.unit_pixels(picture), key), mode="F")
    return self.standardize(images.resize(picture, self.image_size))

  def standardize(self, image: np.ndarray) -> np.ndarray:
    """A gray [S, S] image in [0, 1], its intensities standardized per image."""
    return intensity.standardize(image, self.intensity, self.clahe_clip_limit)

  def normalize(self, image: np.ndarray) -> np.ndarray:
    """A gray [S, S] image in [0, 1] -> normalized float32 [S, S, C]."""
    image = ((image - self.mean) / self.std)[..., None]
    if not self.grayscale:
      image = np.repeat(image, 3, axis=-1)
    return image.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Loaded:
  """A source record's loaded image (`Preprocess.load`: decoded, resized, standardized) and
  label, read from `cache` when there is one (see `image_cache`)."""

  preprocess: Preprocess
  cache: image_cache.ImageCache | None
  num_records: int  # grain passes epoch * num_records + the record's position.

  def __call__(self, index: int, record: Record) -> tuple[np.ndarray, labels.Label]:
    if self.cache is None:
      return self.preprocess.load(record), record["label"]
    return self.cache[index % self.num_records], record["label"]


@dataclasses.dataclass(frozen=True)
class _Augmented:
  """A loaded image augmented (unless `augment_config` is None) and normalized."""

  preprocess: Preprocess
  augment_config: ml_collections.ConfigDict | None

  def __call__(self, loaded: tuple[np.ndarray, labels.Label],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = loaded
    return self.preprocess.finish(image.astype(np.float32), label, self.augment_config, rng)


@dataclasses.dataclass(frozen=True)
class _Unfinished:
  """A loaded image as the train step's augmentation takes it (`device_augment`): gray
  [S, S] in [0, 1] as float16, the image cache's type, neither augmented nor normalized, so
  that the workers only read and batch, and each batch crosses to the device at 2 bytes a
  pixel."""

  def __call__(self, loaded: tuple[np.ndarray, labels.Label]) -> dict[str, np.ndarray]:
    image, label = loaded
    return {"image": image.astype(device_augment.STEP_INPUT_DTYPE, copy=False),
            "label": labels.batch_label(label)}


@dataclasses.dataclass(frozen=True)
class _Views:
  """`count` views of a loaded image, each augmented with its own draws, normalized and
  stacked: {"views": [count, S, S, C]} (self-supervised pretraining; no label)."""

  preprocess: Preprocess
  augment_config: ml_collections.ConfigDict
  count: int

  def __call__(self, loaded: tuple[np.ndarray, labels.Label],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = loaded
    image = image.astype(np.float32)
    return {"views": np.stack([self.preprocess.finish(image, label, self.augment_config, rng)
                               ["image"] for _ in range(self.count)])}


@dataclasses.dataclass(frozen=True)
class _Indexed:
  """Preprocesses the record at an index, keeping the index and whether it is padding."""

  preprocess: Preprocess
  num_real: int

  def __call__(self, index: int, record: Record) -> dict[str, np.ndarray]:
    return {**self.preprocess(record), "index": np.int32(index),
            "mask": np.float32(index < self.num_real)}


def _process_slices(ds: grain.MapDataset, global_batch_size: int, process_index: int,
                    process_count: int) -> grain.MapDataset:
  """Batches of this process's slice of each global batch of `ds`.

  Batching is lazy, so a process decodes only its own slices.
  """
  local = ds.batch(global_batch_size // process_count, drop_remainder=True)
  return local[process_index::process_count]


def _to_iter_dataset(ds: grain.MapDataset, data_config) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data_config.read_threads, prefetch_buffer_size=data_config.prefetch))
  return workers.prefetch(it, data_config.num_workers)


def class_balanced(records: Sequence[Record], seed: int) -> list[Record]:
  """`records` (class-index labels) with each class repeated up to the largest class's
  count: whole copies, then a seeded random choice of distinct records for the remainder."""
  rng = np.random.default_rng(seed)
  by_label: dict[int, list[Record]] = {}
  for record in records:
    by_label.setdefault(record["label"], []).append(record)
  target = max(len(members) for members in by_label.values())
  balanced = []
  for _, members in sorted(by_label.items()):
    copies, remainder = divmod(target, len(members))
    balanced.extend(members * copies)
    balanced.extend(members[i] for i in sorted(rng.choice(len(members), remainder, replace=False)))
  return balanced


def create_train_dataset(
    records: Sequence[Record], data_config: ml_collections.ConfigDict, global_batch_size: int,
    seed: int, process_index: int = 0, process_count: int = 1, views: int = 1,
) -> grain.IterDataset:
  """An endless, shuffled, augmented stream of this process's share of each global batch.

  Global batch k holds shuffled examples [k * B, (k + 1) * B) of an endless sequence of
  epochs, each shuffled differently; process p takes the p-th of its `process_count` equal
  slices, the rows its devices hold in the global array. Augmentation is seeded by the
  global position, so the batches do not depend on the number of processes or workers.
  With `data.balanced_sampling`, the smaller classes are oversampled to the largest one's
  count, so each class fills about the same share of every batch. With `data.cache_images`,
  each process first loads every record once (before augmentation) into a file that its
  workers share, so every epoch only augments. With `data.augment_on=device`, each "image"
  is gray [S, S] float16 in [0, 1], for the train step to augment and normalize
  (`device_augment.augment_batch`). With `views` > 1 (pretraining: host
  augmentation, labels unused), each example is {"views": [views, S, S, C]} instead, each
  view augmented independently.
  """
  records = class_balanced(records, seed) if data_config.balanced_sampling else list(records)
  preprocess = Preprocess.from_config(data_config)
  cache = None
  if data_config.cache_images:
    cache = image_cache.ImageCache.build(
        records, preprocess.load, input_shape(data_config)[:2], data_config.num_workers,
        data_config.read_threads, data_config.get("cache_dir") or None)
  ds = grain.MapDataset.source(records).map_with_index(_Loaded(preprocess, cache, len(records)))
  ds = ds.shuffle(seed=seed).repeat()
  if views > 1:
    ds = ds.random_map(_Views(preprocess, data_config.augment, views), seed=seed)
  elif device_augment.on_device(data_config):
    ds = ds.map(_Unfinished())
  else:
    ds = ds.random_map(_Augmented(preprocess, data_config.augment), seed=seed)
  return _to_iter_dataset(_process_slices(ds, global_batch_size, process_index,
                                          process_count), data_config)


def create_eval_dataset(
    records: Sequence[Record], data_config: ml_collections.ConfigDict, global_batch_size: int,
    process_index: int = 0, process_count: int = 1, shift: shifts.Shift | None = None,
) -> grain.IterDataset:
  """One pass over `records` in order, without augmentation (under `shift` if given).

  The records are padded to whole global batches; `mask` is 0 on padding, and `index`
  is the position in `records`.
  """
  padding = -len(records) % global_batch_size
  ds = grain.MapDataset.source(list(records) + [records[0]] * padding)
  ds = ds.map_with_index(_Indexed(Preprocess.from_config(data_config, shift), len(records)))
  return _to_iter_dataset(_process_slices(ds, global_batch_size, process_index,
                                          process_count), data_config)
