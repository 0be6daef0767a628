"""Config files, config args and config checks."""

import pathlib
import re

import pytest
from helpers import load_config_module

from xray_jax import config_args, config_checks, config_help, errors, models
from xray_jax.data import datasets

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


CONFIG_FILES = sorted(CONFIG_DIR.glob("*.py"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_config_resolves_and_checks(path, arg, tmp_path):
  config = load_config_module(path).get_config(arg)
  if config.data.source == "folder":  # The folder layouts have no download to fall back on.
    config.data.dir = str(tmp_path)
  config_checks.check_config(config)
  models.create_model(config.model, num_classes=2)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_runlocal_is_smaller(path):
  module = load_config_module(path)
  full, local = module.get_config(None), module.get_config("runlocal")
  assert local.data.image_size < full.data.image_size
  assert 0 < local.training.num_train_steps <= 50


def test_config_args_select_model_and_resolution():
  config = load_config_module(CONFIG_DIR / "pneumonia.py").get_config("model=resnet18,res=128")
  assert config.model.name == "resnet18"
  assert config.data.image_size == 128
  assert "widths" not in config.model  # Only the chosen family's fields.


def test_parse_arg_types_and_errors():
  arg = config_args.parse_arg("runlocal,res=96", runlocal=False, res=224, model="cnn")
  assert arg.runlocal is True and arg.res == 96 and arg.model == "cnn"
  with pytest.raises(errors.ConfigError, match="'size'"):
    config_args.parse_arg("size=3", res=224)
  with pytest.raises(errors.ConfigError, match="'res'.*int"):
    config_args.parse_arg("res=big", res=224)


@pytest.mark.parametrize("key, value, message", [
    ("data.val_fraction", 1.5, "data.val_fraction=1.5"),
    ("data.augment.scale_min", 0.0, "data.augment.scale_min"),
    ("data.augment.stretch", -0.1, "data.augment.stretch=-0.1: expected a value in"),
    ("training.global_batch_size", 0, "training.global_batch_size=0"),
    ("training.eval_every_steps", 0, "training.eval_every_steps=0"),
    ("model.pooling", "mean", "model.pooling='mean'"),
    ("model.style_mixing", 1.5, "model.style_mixing=1.5: expected a probability"),
    ("model.style_mixing_alpha", 0.0, "model.style_mixing_alpha=0.0: expected a positive"),
    ("data.group_pattern", "person\\d+", "data.group_pattern='person"),
    ("data.group_pattern", "(person", "data.group_pattern"),
    ("data.cache_dir", "/nonexistent/cache", "data.cache_dir='/nonexistent/cache'"),
    ("data.augment_on", "gpu", "data.augment_on='gpu': expected host or device"),
    ("evaluation.bootstrap_resamples", -1, "evaluation.bootstrap_resamples=-1"),
    ("evaluation.confidence_level", 95, "evaluation.confidence_level=95"),
    ("loss.name", "hinge", "config.loss.name='hinge': expected cross_entropy"),
])
def test_check_config_names_the_bad_key(key, value, message):
  config = load_config_module(CONFIG_DIR / "pneumonia.py").get_config(None)
  section, _, field = key.rpartition(".")
  target = config
  for part in section.split("."):
    target = target[part]
  target[field] = value
  with pytest.raises(errors.ConfigError, match=message.replace(".", r"\.")):
    config_checks.check_config(config)


def test_bad_threshold_method_or_fixed_threshold_is_reported():
  evaluation = load_config_module(CONFIG_DIR / "pneumonia.py").get_config(None).evaluation
  evaluation.threshold_method = "median"
  with pytest.raises(errors.ConfigError, match=r"threshold_method='median'.*fixed, youden"):
    config_checks.check_evaluation_config(evaluation)
  evaluation.threshold_method, evaluation.fixed_threshold = "fixed", 1.5
  with pytest.raises(errors.ConfigError, match=r"evaluation\.fixed_threshold=1\.5"):
    config_checks.check_evaluation_config(evaluation)


@pytest.mark.parametrize("model", ["resnet18", "densenet121"])
def test_bad_stem_is_reported(model):
  config = load_config_module(CONFIG_DIR / "pneumonia.py").get_config(f"model={model}")
  config.model.stem = "tiny"
  with pytest.raises(errors.ConfigError, match=r"model\.stem='tiny'.*imagenet, small, fast, auto"):
    config_checks.check_config(config)


@pytest.mark.parametrize("field, value, message", [
    ("growth_rate", 0, "model.growth_rate=0: expected a positive integer"),
    ("block_sizes", (), "model.block_sizes=(): expected one or more"),
    ("block_sizes", (6, 0), "model.block_sizes=(6, 0): expected one or more"),
])
def test_bad_densenet_shape_is_reported(field, value, message):
  config = load_config_module(CONFIG_DIR / "pneumonia.py").get_config("model=densenet121")
  config.model[field] = value
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    config_checks.check_config(config)


def test_runlocal_densenet_is_shallow_and_checks():
  """The runlocal DenseNet compiles in seconds: 2 layers a block instead of 6 to 24."""
  config = load_config_module(CONFIG_DIR / "pneumonia.py").get_config("runlocal,model=densenet121")
  config_checks.check_config(config)
  assert tuple(config.model.block_sizes) == (2, 2, 2, 2)
  assert isinstance(models.create_model(config.model, 2), models.densenet.DenseNet)


def test_unknown_data_source_is_reported(tmp_path):
  config = load_config_module(CONFIG_DIR / "pneumonia.py").get_config(None)
  config.data.source = "s3"
  with pytest.raises(errors.ConfigError, match="config.data.source='s3'; expected one of"):
    datasets.load_splits(config.data, tmp_path)


def test_unknown_model_name_is_reported():
  config = load_config_module(CONFIG_DIR / "pneumonia.py").get_config(None)
  config.model.name = "vgg"
  with pytest.raises(errors.ConfigError, match="'vgg'.*cnn, resnet18"):
    models.create_model(config.model, 2)


@pytest.mark.parametrize("config_file, model, field, comment", [
    ("pneumonia.py", "cnn", "loss.class_weights", "# none, balanced (inverse frequency)"),
    ("pneumonia_3class.py", "cnn", "loss.class_weights", "# Viral cases are the smallest"),
    ("pneumonia_cpu.py", "resnet18", "data.num_workers", "# Decoding in threads of the main"),
    ("pneumonia_cpu.py", "resnet18", "model.dropout", "# Dropout rate before the classifier."),
    ("finetune_cpu.py", "resnet18", "model.style_mixing", "# MixStyle on half the batches"),
    ("finetune_cpu.py", "cnn", "model.style_mixing", "# MixStyle on half the batches"),
    ("finetune_cpu.py", "resnet18", "data.augment.stretch", "# Height times s, width over s"),
    ("pneumonia.py", "resnet18", "data.augment.stretch", "# Proportions: the height times s"),
    ("pneumonia.py", "cnn", "model.dropout", "# Dropout rate before each dense layer"),
    ("pneumonia.py", "densenet121", "model.growth_rate", "# Channels that each dense layer"),
    ("pneumonia.py", "densenet121", "model.width", "# Channels of the stem."),
    ("pneumonia.py", "densenet121", "seed", "# Seeds parameter init"),
])
def test_print_config_takes_each_comment_from_the_file_that_sets_the_field(
    config_file, model, field, comment):
  """A variant's comment explains what it changes; the rest comes from the file it builds on,
  never from an unrelated sibling, and model fields from the model's own family."""
  path = CONFIG_DIR / config_file
  config = load_config_module(path).get_config(f"model={model}")
  line = next(x for x in config_help.describe(config, path).splitlines()
              if x.startswith(f"{field} = "))
  assert f"  {comment}" in line, line
