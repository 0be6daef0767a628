"""benchmarks/torch_reference.py, the PyTorch side of `benchmark --compare_torch`: the same
models as xray_jax, and its speed command through the benchmark's subprocess."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import pytest
from helpers import REPO_ROOT, load_config_module

from xray_jax import models
from xray_jax.speed import suite

SCRIPT = REPO_ROOT / "benchmarks" / "torch_reference.py"


def _reference():
  spec = importlib.util.spec_from_file_location("torch_reference", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", suite.TORCH_MODELS)
def test_reference_models_are_xray_jaxs(name):
  """Same layers: the same parameter count (BatchNorm's scale and offset included), one
  input channel, two logits."""
  import torch
  torch_model = _reference().MODELS[name](2)
  config = load_config_module(REPO_ROOT / "configs" / "pneumonia.py").get_config(f"model={name}")
  model = models.create_model(config.model, 2)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1))))
  assert (sum(p.numel() for p in torch_model.parameters())
          == sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))
  assert tuple(torch_model.eval()(torch.zeros(3, 1, 64, 64)).shape) == (3, 2)


def test_speed_command_reports_through_the_benchmark():
  result = suite.run_torch_reference(str(SCRIPT), sys.executable, "cnn", 32, 4, 2, 1,
                                     ["--warmup=1", "--eval_steps=1"])
  assert result["model"] == "cnn" and result["batch"] == 4 and result["device"] == "cpu"
  assert result["train_img_per_s"] > 0 and result["eval_img_per_s"] > 0
  assert result["fast"] is False
