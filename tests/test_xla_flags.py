"""xray_jax's XLA:CPU defaults: set by the binaries before JAX starts, never on import, never
over the user's own choice."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

from xray_jax.speed import xla_flags

# Imports the package and a binary's module, runs `SETUP`, then prints whether the
# compiled gradient of a convolution hands it to YNNPACK (which takes convolutions from 32
# channels up), and whether the imports changed the environment.
PROBE = """
import os
before = dict(os.environ)
import xray_jax, BINARY
imports_changed_environ = dict(os.environ) != before
SETUP
import jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
grad = jax.jit(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)))
hlo = grad.lower(jnp.ones((2, 8, 8, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print("ynn" if "__ynn_fusion" in hlo else "eigen", imports_changed_environ)
"""
BINARY_SETUP = "from xray_jax import cli; cli.set_up_process()"


def _probe(xla_flags_value: str | None, setup: str = "", binary: str = "xray_jax.main") -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags_value is not None:
    env["XLA_FLAGS"] = xla_flags_value
  code = PROBE.replace("SETUP", setup).replace("BINARY", binary)
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=True).stdout.strip()


@pytest.mark.parametrize("binary", ["main", "pretrain", "evaluate", "predict", "benchmark"])
def test_importing_xray_jax_leaves_the_process_alone(binary):
  assert _probe(None, binary=f"xray_jax.{binary}") == "ynn False"  # jaxlib's default stands.


def test_the_binaries_give_cpu_convolutions_to_eigen():
  assert _probe(None, BINARY_SETUP) == "eigen False"
  assert _probe("--xla_force_host_platform_device_count=2", BINARY_SETUP) == "eigen False"


def test_the_users_own_ynn_setting_wins():
  assert _probe(f"{xla_flags.YNN_FUSION_FLAG}=+individual_convolution", BINARY_SETUP) == (
      "ynn False")


def test_set_defaults_appends_and_keeps_other_flags():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_flags.set_defaults(environ)
  assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                          xla_flags.CPU_CONVOLUTIONS_TO_EIGEN]
  xla_flags.set_defaults(environ)  # Idempotent.
  assert environ["XLA_FLAGS"].count(xla_flags.YNN_FUSION_FLAG) == 1
  empty = {}
  xla_flags.set_defaults(empty)
  assert empty["XLA_FLAGS"] == xla_flags.CPU_CONVOLUTIONS_TO_EIGEN


@pytest.mark.parametrize("version", ["0.9.2", "0.4.38"])
def test_older_jaxlib_is_left_alone(monkeypatch, version):
  """Older XLA builds abort on flags they do not know."""
  monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_flags.set_defaults(environ)
  assert environ == {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def test_version_parsing():
  assert xla_flags._version("0.10.2") == (0, 10)
  assert xla_flags._version("0.10.0.dev20260101") == (0, 10)
  assert xla_flags._version("1.0rc1") == (1, 0)
