"""Shared settings and fixtures: worker processes, 8 CPU devices, a compilation cache for the
session, SIGINT delivered, parsed absl flags, small generated datasets, and the `cluster`
marker's check for system tools."""

import atexit
import os
import pathlib
import shutil
import signal
import tempfile

# Compiled programs go to an on-disk cache for the session, which the test workers and the
# trainer subprocesses share: the suite's many tiny runs of the same model compile each
# program once. The first process (pytest, which starts the workers) makes and removes it.
_XLA_CACHE = os.environ.get("XRAY_JAX_TESTS_XLA_CACHE")
if _XLA_CACHE is None:
  _XLA_CACHE = os.environ["XRAY_JAX_TESTS_XLA_CACHE"] = tempfile.mkdtemp(
      prefix="xray_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_XLA_CACHE,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

# The Ctrl-C tests need SIGINT delivered, here and in the processes started, also where the
# suite runs as a script's background job, which starts with SIGINT ignored.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

import jax  # noqa: E402

# Every test sees 8 devices, so the trainer's sharded path is what the suite exercises.
jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402
from absl import flags  # noqa: E402
from helpers import cluster_test_verdict, make_dataset, tiny_config  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
  """Workers for `-n auto` (pyproject's addopts): one per core, 4 at most, as each holds
  about 3 GB and many tests start trainer processes of their own."""
  return min(len(os.sched_getaffinity(0)), 4)


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
