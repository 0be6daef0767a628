"""Checks a resolved config before anything is built, naming the offending key."""

import pathlib
import re

import ml_collections

from xray_jax import config_args, errors, labels, losses, tasks
from xray_jax.data import (
  csv_source,
  datasets,
  download,
  eval_sets,
  image_check,
  images,
  intensity,
)
from xray_jax.evaluators import metrics, tta
from xray_jax.models import common

AUGMENT_ON = ("host", "device")  # Where data.augment runs: grain workers or the step.


def require(ok: bool, key: str, value, expected: str) -> None:
  """Raises ConfigError "config.KEY=VALUE: expected ..." unless `ok`."""
  if not ok:
    raise errors.ConfigError(f"config.{key}={value!r}: expected {expected}")


def _is_checksum(text: str) -> bool:
  try:
    download.parse_checksum(text)
  except errors.ConfigError:
    return False
  return True


def _group_count(pattern: str) -> int:
  """The number of groups in a regular expression; -1 when it does not compile."""
  try:
    return re.compile(pattern).groups
  except re.error:
    return -1


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first value that cannot work."""
  data, aug, training = config.data, config.data.augment, config.training
  task = tasks.get(config)  # Raises ConfigError for an unknown task.
  require(bool(data.dir) or data.source not in ("folder", "dicom_csv"), "data.dir", data.dir,
           "the dataset root folder")
  require(data.image_size >= 8, "data.image_size", data.image_size, "an integer >= 8")
  require(data.std > 0, "data.std", data.std, "a positive number")
  require(data.intensity in intensity.METHODS, "data.intensity", data.intensity,
           " or ".join(intensity.METHODS))
  require(0 < data.clahe_clip_limit <= 1, "data.clahe_clip_limit", data.clahe_clip_limit,
           "a value in (0, 1]")
  require(0 < data.val_fraction < 1, "data.val_fraction", data.val_fraction,
           "a fraction in (0, 1)")
  require(_group_count(data.group_pattern) >= 1, "data.group_pattern", data.group_pattern,
           "a regular expression with a group (the patient id)")
  require(data.dicom_multiframe in images.DICOM_MULTIFRAME_MODES, "data.dicom_multiframe",
           data.dicom_multiframe, " or ".join(images.DICOM_MULTIFRAME_MODES))
  require(data.check_images in image_check.MODES, "data.check_images", data.check_images,
           ", ".join(image_check.MODES))
  require(not data.checksum or _is_checksum(data.checksum), "data.checksum", data.checksum,
           "empty, md5:HEX or sha256:HEX")
  if data.source == "csv":
    csv_source.check_csv_config(data, task.name)
  if data.source == "npz":
    require(bool(data.npz_path), "data.npz_path", data.npz_path, "an npz file path or URL")
  if data.source in ("tfds", "auto"):
    require(data.tfds_name.split("/")[0] in datasets.TFDS_BUILDERS, "data.tfds_name",
             data.tfds_name, f"one of {', '.join(datasets.TFDS_BUILDERS)} (NAME/CONFIG)")
  cache_dir = data.get("cache_dir", "")
  require(not cache_dir or pathlib.Path(cache_dir).is_dir(), "data.cache_dir", cache_dir,
           "empty (the system's temporary folder) or an existing folder")
  for key in ("num_workers", "read_threads", "prefetch"):
    require(data[key] >= (0 if key == "num_workers" else 1), f"data.{key}", data[key],
             "a non-negative integer" if key == "num_workers" else "a positive integer")
  augment_on = data.get("augment_on", "host")
  require(augment_on in AUGMENT_ON, "data.augment_on", augment_on, " or ".join(AUGMENT_ON))
  require(aug.rotation_degrees >= 0, "data.augment.rotation_degrees", aug.rotation_degrees,
           ">= 0")
  require(0 < aug.scale_min <= aug.scale_max, "data.augment.scale_min", aug.scale_min,
           f"0 < scale_min <= scale_max ({aug.scale_max})")
  require(0 < aug.crop_area_min <= 1, "data.augment.crop_area_min", aug.crop_area_min,
           "a value in (0, 1]; 1 disables the random resized crop")
  for key in ("translate_fraction", "hflip_prob", "brightness", "contrast", "gamma",
              "blur_sigma", "noise_std", "intensity_ramp", "stretch"):
    require(0 <= aug.get(key, 0.0) <= 1, f"data.augment.{key}", aug.get(key), "a value in [0, 1]")
  if config.model.name == "cnn":
    require(config.model.pooling in ("avg", "max", "flatten"), "model.pooling",
             config.model.pooling, "avg, max or flatten")
  require(0 <= config.model.get("style_mixing", 0.0) <= 1, "model.style_mixing",
          config.model.get("style_mixing"), "a probability in [0, 1]; 0 disables MixStyle")
  require(config.model.get("style_mixing_alpha", 0.1) > 0, "model.style_mixing_alpha",
          config.model.get("style_mixing_alpha"), "a positive Beta parameter, e.g. 0.1")
  family = config_args.model_family(config.model.name)
  if family in ("resnet", "densenet"):
    stem = config.model.get("stem", "imagenet")
    require(stem in common.STEMS, "model.stem", stem, ", ".join(common.STEMS))
  if family == "densenet":
    require(config.model.growth_rate > 0, "model.growth_rate", config.model.growth_rate,
            "a positive integer")
    block_sizes = tuple(config.model.block_sizes)
    require(bool(block_sizes) and min(block_sizes) > 0, "model.block_sizes", block_sizes,
            "one or more positive layer counts, e.g. 6,12,24,16")
  require(not (data.balanced_sampling and task.label_is_vector), "data.balanced_sampling",
           data.balanced_sampling, f"False with config.task={task.name!r} (images have no one "
           "class to balance; loss.class_weights=balanced weighs each finding's positives)")
  require(config.loss.name in losses.LOSSES, "loss.name", config.loss.name,
           " or ".join(losses.LOSSES))
  require(config.loss.uncertain in labels.UNCERTAINTY_POLICIES, "loss.uncertain",
           config.loss.uncertain, " or ".join(labels.UNCERTAINTY_POLICIES))
  require(0 <= config.loss.label_smoothing < 1, "loss.label_smoothing",
           config.loss.label_smoothing, "a value in [0, 1)")
  require(config.loss.mixup_alpha >= 0, "loss.mixup_alpha", config.loss.mixup_alpha,
           ">= 0; 0 disables mixup")
  require(config.optimizer.learning_rate > 0, "optimizer.learning_rate",
           config.optimizer.learning_rate, "a positive number")
  require(config.optimizer.weight_decay >= 0, "optimizer.weight_decay",
           config.optimizer.weight_decay, ">= 0")
  for key in ("global_batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
    require(training[key] > 0, f"training.{key}", training[key], "a positive integer")
  require(training.num_train_steps > 0 or training.num_epochs > 0, "training.num_epochs",
           training.num_epochs, "> 0 (or training.num_train_steps > 0)")
  require(config.finetune.backbone_learning_rate_scale >= 0,
           "finetune.backbone_learning_rate_scale",
           config.finetune.backbone_learning_rate_scale, ">= 0 (relative to the head's)")
  require(0 <= training.ema_decay < 1, "training.ema_decay", training.ema_decay,
           "a value in [0, 1); 0 disables the moving average")
  sets = ("val", *eval_sets.parse(config.data.get("eval_sets", "")))
  best_set, _, best_name = training.get("best_metric", "val/auc").partition("/")
  require(best_set in sets and best_name in ("auc", "accuracy", "nll"), "training.best_metric",
           training.get("best_metric"), f"SET/METRIC with SET one of {', '.join(sets)} and "
           "METRIC auc, accuracy or nll")
  require(config.evaluation.get("operating_point_split", "val") in sets,
          "evaluation.operating_point_split", config.evaluation.get("operating_point_split"),
          f"one of {', '.join(sets)} (val or a set of data.eval_sets)")
  check_evaluation_config(config.evaluation, task)
  for key in ("eval_every_steps", "checkpoint_every_steps"):
    require(training[key] > 0 or training[key] == -1, f"training.{key}", training[key],
             "a positive integer, or -1 for once per epoch")


def check_evaluation_config(evaluation: ml_collections.ConfigDict,
                            task: tasks.Task = tasks.SINGLE_LABEL) -> None:
  """Raises ConfigError for a bad `config.evaluation` value (for a run of `task`)."""
  require(evaluation.threshold_method in metrics.THRESHOLD_METHODS, "evaluation.threshold_method",
           evaluation.threshold_method, ", ".join(metrics.THRESHOLD_METHODS))
  if task.label_is_vector:
    methods = ("fixed", *metrics.CHOSEN_METHODS)
    require(evaluation.threshold_method in methods, "evaluation.threshold_method",
            evaluation.threshold_method, f"{', '.join(methods)} with config.task={task.name!r} "
            "(robust is single-label only)")
    require(not evaluation.get("temperature_scaling", False), "evaluation.temperature_scaling",
            evaluation.get("temperature_scaling"), f"False with config.task={task.name!r} (the "
            "temperature rescales a softmax)")
  if evaluation.threshold_method == "fixed":
    require(0 < evaluation.get("fixed_threshold", -1) < 1, "evaluation.fixed_threshold",
             evaluation.get("fixed_threshold"), "a value in (0, 1)")
  require(0 < evaluation.target_sensitivity <= 1, "evaluation.target_sensitivity",
           evaluation.target_sensitivity, "a value in (0, 1]")
  resamples = evaluation.get("bootstrap_resamples", 1000)
  require(isinstance(resamples, int) and resamples >= 0, "evaluation.bootstrap_resamples",
           resamples, "0 (no intervals) or a number of resamples")
  level = evaluation.get("confidence_level", 0.95)
  require(0 < level < 1, "evaluation.confidence_level", level, "a value in (0, 1)")
  tta.configured_views(evaluation)  # Raises ConfigError for an unknown view.
  require(evaluation.calibration_bins >= 1, "evaluation.calibration_bins",
           evaluation.calibration_bins, "a positive integer")
