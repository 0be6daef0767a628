"""Parses config strings such as `runlocal,model=resnet18,res=128`."""

import importlib.util
import pathlib
import types
from typing import Any

import ml_collections

from xray_jax import errors


def _convert(key: str, text: str, default: Any) -> Any:
  """Converts `text` to the type of `default`."""
  if isinstance(default, bool):
    if text.lower() in ("1", "true", "yes", ""):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise errors.ConfigError(f"config arg {key!r}: expected true or false, got {text!r}")
  try:
    return type(default)(text)
  except ValueError:
    raise errors.ConfigError(
        f"config arg {key!r}: expected {type(default).__name__}, got {text!r}") from None


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Returns `defaults` updated from a comma-separated `key=value` string.

  A bare `key` sets a boolean to true (`runlocal` is `runlocal=true`). Values take the
  type of their default; unknown keys are an error that lists the known ones.
  """
  result = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise errors.ConfigError(
          f"unknown config arg {key!r}; known: {', '.join(sorted(defaults))}")
    result[key] = _convert(key, value.strip(), defaults[key])
  return ml_collections.ConfigDict(result)


def model_family(name: str) -> str:
  """The family of a registered model name, whose fields a config lists together: the name
  less its trailing digits (resnet50 -> resnet, densenet121 -> densenet, cnn -> cnn)."""
  return name.rstrip("0123456789")


def import_sibling(config_file: str, name: str) -> types.ModuleType:
  """Imports the config module `name` (e.g. "pneumonia") from the folder of `config_file`,
  so a variant config can start from its base config's `get_config`."""
  path = pathlib.Path(config_file).with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"xray_jax_configs.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
