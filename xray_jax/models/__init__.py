"""Model registry: `config.model.name` -> a Flax module returning class logits."""

import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xray_jax import errors, tasks
from xray_jax.models import cnn, densenet, resnet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": cnn.ClassicCNN,
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "densenet121": densenet.DenseNet121,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the registered model; the config's fields other than name/dtype are its kwargs."""
  if model_config.name not in MODELS:
    raise errors.ConfigError(
        f"config.model.name={model_config.name!r} is not a model; known: {', '.join(MODELS)}")
  if model_config.dtype not in DTYPES:
    raise errors.ConfigError(
        f"config.model.dtype={model_config.dtype!r}; expected one of {', '.join(DTYPES)}")
  kwargs = {k: v for k, v in model_config.items() if k not in ("name", "dtype")}
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  try:
    return MODELS[model_config.name](
        num_classes=num_classes, dtype=DTYPES[model_config.dtype], **kwargs)
  except TypeError as e:
    raise errors.ConfigError(f"config.model does not fit {model_config.name!r}: {e}") from e


def head_name(params: dict) -> str:
  """The top-level module of `params` that outputs the logits: every model here ends in a
  dense layer, the one with the highest index."""
  dense = [name for name in params if re.fullmatch(r"Dense_\d+", name)]
  if not dense:
    raise errors.ConfigError("the model has no Dense_N layer to call its head")
  return max(dense, key=lambda name: int(name.split("_")[1]))


def class_probabilities(model: nn.Module, variables: dict, images: jax.Array,
                        task: tasks.Task = tasks.SINGLE_LABEL) -> jax.Array:
  """Probabilities [N, classes] of a model in inference mode, as `task` makes them (a
  softmax over the classes, or a sigmoid per finding)."""
  return task.probabilities(model.apply(variables, images, train=False))
