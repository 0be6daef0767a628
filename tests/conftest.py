"""Shared fixtures: 8 CPU devices, parsed absl flags, small generated datasets, and the
`cluster` marker's check for system tools."""

import os
import pathlib

import jax

# Every test sees 8 devices, so the trainer's sharded path is what the suite exercises.
jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402
from absl import flags  # noqa: E402
from helpers import cluster_test_verdict, make_dataset, tiny_config  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.


def pytest_runtest_setup(item: pytest.Item) -> None:
  """Skips a `cluster` test whose system tools are missing, saying what to install; fails it
  instead where XRAY_JAX_REQUIRE_CLUSTER_TESTS=1 (CI), so CI never skips it silently."""
  marker = item.get_closest_marker("cluster")
  if marker is None:
    return
  verdict = cluster_test_verdict(marker.args, marker.kwargs.get("root", False), dict(os.environ))
  if verdict is not None:
    action, reason = verdict
    (pytest.fail if action == "fail" else pytest.skip)(reason)


@pytest.fixture
def dataset_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> pathlib.Path:
  """A finished tiny run (checkpoints at steps 2, 4, 6) on data that has a test split.

  Read-only for the tests that share it: copy it to change it.
  """
  from xray_jax import train

  root = tmp_path_factory.mktemp("trained")
  data = make_dataset(root / "data", per_class=24)
  test = make_dataset(root / "test_source", per_class=6, seed=1)
  (test / "train").rename(data / "test")
  workdir = root / "work"
  train.train_and_evaluate(tiny_config(data, num_train_steps=6, keep_checkpoints=5), str(workdir))
  return workdir
