"""Helpers shared by the tests: generated datasets and DICOMs, tiny configs, subprocess and
terminal runners, and whole-step comparisons."""

import fcntl
import importlib.util
import json
import os
import pathlib
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import optax
import PIL.Image
import pydicom
import pytest

from xray_jax import checkpointing, errors, losses, models, optimizers, sharding, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# `configs/pneumonia.py:runlocal` shrunk to a 2-block CNN on 16x16 images: seconds a run.
RUNLOCAL = "configs/pneumonia.py:runlocal"


TINY_FLAGS = ["--config.data.image_size=16", "--config.model.widths=4,8",
              "--config.model.dense=8", "--config.training.global_batch_size=8",
              "--config.training.eval_batch_size=8", "--config.data.val_fraction=0.25",
              "--config.optimizer.schedule=constant", "--config.data.source=folder"]


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment, with `devices` CPU devices for a child JAX process."""
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          **extra}


def trainer_command(workdir: pathlib.Path, dataset_dir: pathlib.Path, *flags: str) -> list[str]:
  """`python -m xray_jax.main` on the tiny runlocal config, logging to stderr."""
  return [sys.executable, "-m", "xray_jax.main", "--alsologtostderr", f"--workdir={workdir}",
          f"--config={RUNLOCAL}", *TINY_FLAGS, f"--config.data.dir={dataset_dir}", *flags]


def wait_for_text(path: pathlib.Path, pattern: str, timeout: float = 300,
                  process: subprocess.Popen | None = None) -> re.Match:
  """Polls the file at `path` until `pattern` matches its text; fails if `process` ends or
  the time runs out first."""
  deadline = time.monotonic() + timeout
  while True:
    text = path.read_text(errors="replace") if path.is_file() else ""
    if match := re.search(pattern, text):
      return match
    if process is not None and process.poll() is not None:
      raise AssertionError(f"process ended ({process.returncode}) before {pattern!r}:\n"
                           f"{text[-3000:]}")
    assert time.monotonic() < deadline, f"no {pattern!r} in {path}:\n{text[-3000:]}"
    time.sleep(0.02)


def recorded_train_steps(workdir: pathlib.Path) -> list[int]:
  """The steps whose train metrics a run's metrics.jsonl holds, in order."""
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [record["step"] for record in map(json.loads, lines) if "train/loss" in record]


def _latest_variables(workdir: pathlib.Path) -> tuple[int, dict[str, np.ndarray]]:
  """The step of a run's latest checkpoint, and its parameters and BatchNorm statistics by
  path, as host arrays."""
  from xray_jax import trained

  loaded = trained.load(workdir, "latest")
  return loaded.step, {jax.tree_util.keystr(path): np.asarray(x)
                       for path, x in jax.tree_util.tree_leaves_with_path(loaded.variables)}


def final_variables(workdir: pathlib.Path) -> list[np.ndarray]:
  """Parameters and BatchNorm statistics of a run's latest checkpoint, as host arrays."""
  return list(_latest_variables(workdir)[1].values())


def assert_same_final_variables(expected: pathlib.Path, found: pathlib.Path,
                                rtol: float = 0.0, atol: float = 0.0) -> None:
  """The latest checkpoints of two runs hold the same step and variables, equal within
  `rtol` and `atol` (exactly, by default); a failure names the variable and the step."""
  (expected_step, want), (found_step, got) = _latest_variables(expected), _latest_variables(found)
  assert (found_step, list(got)) == (expected_step, list(want)), (
      f"{found}: latest checkpoint of step {found_step}, {expected}: of step {expected_step}"
      f"; variables only in one: {sorted(set(got) ^ set(want))}")
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol, err_msg=(
        f"{name} at step {found_step} of {found} differs from {expected}"))


class Killed(Exception):
  """Stops a run right after a checkpoint (`kill_after_saving`)."""


def kill_after_saving(monkeypatch, step: int, run: Callable[[], object]) -> None:
  """Runs `run()` with every checkpointer raising Killed right after it saves `step`; fails
  unless it does."""
  original = checkpointing.Checkpointer.save

  def save_then_die(self, saved, *args, **kwargs):
    original(self, saved, *args, **kwargs)
    if saved == step:
      raise Killed

  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.Checkpointer, "save", save_then_die)
    with pytest.raises(Killed):
      run()


def assert_config_error(run: Callable[[ml_collections.ConfigDict, str], object],
                        config: ml_collections.ConfigDict, field: str, value: object,
                        message: str, workdir: pathlib.Path) -> None:
  """`run(config, workdir)` with the config's `field` (SECTION.KEY) set to `value` raises a
  one-line ConfigError that holds `message`."""
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(errors.ConfigError, match=re.escape(message)) as e:
    run(config, str(workdir))
  assert "\n" not in str(e.value)


# Run before the command: a new session whose controlling terminal is stdin's, as a shell's
# foreground job has: typing Ctrl-C there sends SIGINT to its whole process group.
_TAKE_TERMINAL = ("import fcntl, os, sys, termios; os.setsid(); "
                  "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execvp(sys.argv[1], sys.argv[1:])")


class Terminal:
  """`command` running on a 100-column pseudo-terminal, its controlling terminal."""

  def __init__(self, command: list[str], devices: int = 2, show_stderr: bool = True):
    self._controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    self.process = subprocess.Popen(
        [sys.executable, "-c", _TAKE_TERMINAL, *command], cwd=REPO_ROOT, env=cpu_env(devices),
        stdin=terminal, stdout=terminal, stderr=terminal if show_stderr else subprocess.DEVNULL)
    os.close(terminal)
    self._shown = bytearray()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    while True:
      try:
        chunk = os.read(self._controller, 4096)
      except OSError:  # The program ended and closed the terminal.
        break
      if not chunk:
        break
      self._shown += chunk

  @property
  def screen(self) -> str:
    """What the terminal showed so far."""
    return bytes(self._shown).decode(errors="replace")

  def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
    """Waits until `pattern` shows; fails if the program ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not (match := re.search(pattern, self.screen)):
      assert self.process.poll() is None, f"ended before {pattern!r}:\n{self.screen[-3000:]}"
      assert time.monotonic() < deadline, f"no {pattern!r}:\n{self.screen[-3000:]}"
      time.sleep(0.02)
    return match

  def press_ctrl_c(self) -> None:
    os.write(self._controller, b"\x03")

  def wait(self, timeout: float = 600) -> int:
    """The program's exit code, once it ended and everything it showed was read."""
    returncode = self.process.wait(timeout=timeout)
    self._reader.join(timeout=10)
    os.close(self._controller)
    return returncode


def run_in_terminal(command: list[str], devices: int = 2) -> tuple[int, str]:
  """Runs `command` with stdout on a 100-column pseudo-terminal; (exit code, what it showed)."""
  terminal = Terminal(command, devices, show_stderr=False)
  return terminal.wait(), terminal.screen


def write_image(path: pathlib.Path, label: int, rng: np.random.Generator, size: int = 32):
  """A gray image whose class is a bright square on the left (0) or right (1) half."""
  pixels = rng.uniform(0, 60, size=(size, size))
  row = rng.integers(4, size - 12)
  col = rng.integers(2, size // 2 - 10) + (size // 2 if label else 0)
  pixels[row:row + 8, col:col + 8] = 230
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(pixels.astype(np.uint8)).save(path)


def make_dataset(root: pathlib.Path, per_class: int = 24, classes=("NORMAL", "PNEUMONIA"),
                 seed: int = 0) -> pathlib.Path:
  """ROOT/train/{CLASS}/*.{png,jpeg} with `per_class` images of each class."""
  rng = np.random.default_rng(seed)
  for label, name in enumerate(classes):
    for i in range(per_class):
      suffix = ".png" if i % 2 else ".jpeg"
      write_image(root / "train" / name / f"img{i:03d}{suffix}", label, rng)
  return root


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 0,
               **tags) -> pydicom.Dataset:
  """A digital X-ray dataset holding `pixels` ([H, W], [frames, H, W] or [H, W, 3]) and `tags`.

  It names a patient, whom read_dicom's messages must never mention.
  """
  ds = pydicom.Dataset()
  ds.file_meta = pydicom.dataset.FileMetaDataset()
  ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
  ds.PatientName, ds.PatientID = "Doe^Jane", "PID-4711"
  ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
  for keyword, value in tags.items():
    setattr(ds, keyword, value)
  return ds


def write_dicom(path: pathlib.Path, ds: pydicom.Dataset) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)
  return path


def write_npz(path: pathlib.Path, per_class: int = 10, size: int = 28, val: bool = True,
              seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """A PneumoniaMNIST-like file (uint8 [N, size, size], labels [N, 1]); returns its arrays.

  Class 1 images have a bright right half, so a tiny model can learn them.
  """
  rng = np.random.default_rng(seed)
  found = {}
  for split in ("train", "val", "test") if val else ("train", "test"):
    labels = np.repeat([0, 1], per_class)
    images = rng.integers(0, 80, size=(len(labels), size, size), dtype=np.uint8)
    images[labels == 1, :, size // 2:] += 150
    found[split] = (images, labels)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **{f"{split}_{kind}": array[:, None] if kind == "labels" else array
                    for split, pair in found.items()
                    for kind, array in zip(("images", "labels"), pair, strict=True)})
  return found


def no_augment(**overrides) -> ml_collections.ConfigDict:
  """A `data.augment` section with every step off, then `overrides`."""
  config = ml_collections.ConfigDict(dict(
      rotation_degrees=0.0, scale_min=1.0, scale_max=1.0, translate_fraction=0.0,
      hflip_prob=0.0, brightness=0.0, contrast=0.0, crop_area_min=1.0, gamma=0.0,
      blur_sigma=0.0, noise_std=0.0, intensity_ramp=0.0, stretch=0.0))
  config.update(overrides)
  return config


def load_config_module(path: pathlib.Path):
  """Imports a config file the way `--config=PATH` does."""
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(data_dir: pathlib.Path, **training) -> ml_collections.ConfigDict:
  """The runlocal pneumonia config shrunk to 16x16 images and a few steps."""
  config = load_config_module(REPO_ROOT / "configs" / "pneumonia.py").get_config("runlocal")
  config.data.dir = str(data_dir)
  config.data.image_size = 16
  config.data.val_fraction = 0.25
  config.model.widths = (4, 8)
  config.model.dense = (8,)
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_epochs = 0.0
  config.training.update(dict(global_batch_size=8, num_train_steps=4, log_every_steps=1,
                              eval_every_steps=2, checkpoint_every_steps=2,
                              eval_batch_size=16))
  config.training.update(training)
  return config


# Small models of both families: whole train steps of a custom path against XLA's.
SMALL_MODELS = {
    "cnn": dict(widths=(4, 8), dense=(8,), dropout=0.0),
    "resnet18": dict(width=4, stage_sizes=(1, 1)),  # The stem, a block and a strided block.
}


def three_train_steps(name: str):
  """(params and batch stats, the last gradient norm) after 3 AdamW steps of the small
  `name` model of SMALL_MODELS, on a fixed batch of four 20x20 images, on one device."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  rng = np.random.default_rng(0)
  batch = sharding.to_global_batch({
      "image": rng.normal(size=(4, 20, 20, 1)).astype(np.float32),
      "label": np.array([0, 1, 1, 0], np.int32)}, mesh)
  schedule = optax.constant_schedule(1e-2)
  tx = optimizers.create_optimizer(ml_collections.ConfigDict(dict(
      name="adamw", weight_decay=1e-4, grad_clip_norm=0.0)), schedule)
  model = models.create_model(ml_collections.ConfigDict(dict(
      name=name, dtype="float32", **SMALL_MODELS[name])), 2)
  state = train.create_train_state(model, tx, (20, 20, 1), seed=0, mesh=mesh)
  step = train.make_train_step(mesh, schedule=schedule,
                               loss=losses.mean_loss(losses.cross_entropy))
  for _ in range(3):
    state, metrics = step(state, batch)
  return jax.device_get((state.params, state.batch_stats)), float(metrics["grad_norm"])


def assert_same_training(ours, theirs, rtol: float, atol: float) -> None:
  """Two `three_train_steps` results agree: gradient norms and every variable."""
  (ours_vars, ours_norm), (their_vars, their_norm) = ours, theirs
  assert their_norm > 0
  np.testing.assert_allclose(ours_norm, their_norm, rtol=rtol)
  assert jax.tree.structure(ours_vars) == jax.tree.structure(their_vars)
  for a, b in zip(jax.tree.leaves(ours_vars), jax.tree.leaves(their_vars), strict=True):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def assert_each_log_line_once(log: str) -> None:
  """No message of an absl log (the text after `file:line]`) is printed twice."""
  messages = [line.split("] ", 1)[1] for line in log.splitlines() if "] " in line]
  repeated = {m for m in messages if messages.count(m) > 1}
  assert not repeated, f"printed more than once: {sorted(repeated)}"


# The Debian packages of the system tools that `cluster`-marked tests run.
CLUSTER_PACKAGES = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "sbatch": "slurm-wlm",
                    "munged": "munge", "shellcheck": "shellcheck"}
REQUIRE_CLUSTER_TESTS = "XRAY_JAX_REQUIRE_CLUSTER_TESTS"  # 1: a missing tool fails the test.


def cluster_test_verdict(tools: tuple[str, ...], needs_root: bool, environ: dict[str, str],
                         which=shutil.which, euid: int | None = None) -> tuple[str, str] | None:
  """None when a `cluster` test can run, else ("skip" or "fail", the reason): what is
  missing and how to install it. Fails instead of skipping where REQUIRE_CLUSTER_TESTS=1."""
  missing = [tool for tool in tools if which(tool) is None]
  euid = os.geteuid() if euid is None else euid
  if not missing and (euid == 0 or not needs_root):
    return None
  packages = sorted({CLUSTER_PACKAGES[pathlib.Path(tool).name] for tool in missing})
  needs = [f"{', '.join(missing)} (apt-get install {' '.join(packages)})"] if missing else []
  if needs_root and euid != 0:
    needs.append("root, to start the daemons")
  verdict = "fail" if environ.get(REQUIRE_CLUSTER_TESTS) == "1" else "skip"
  return verdict, f"needs {' and '.join(needs)}"


# Generated findings for the multilabel task: shapes at random places, one per finding.
FINDINGS = ("disk", "bar", "square", "column")
Box = tuple[int, int, int, int]  # (top, bottom, left, right), bottom and right exclusive.


def draw_findings(rng: np.random.Generator, present: np.ndarray,
                  size: int = 32) -> tuple[np.ndarray, dict[str, Box]]:
  """A noisy gray image with each present finding drawn at a random place (a bright disk, a
  bright horizontal bar, a dark square, a bright vertical bar), and each one's box."""
  image = rng.normal(120, 25, size=(size, size))
  rows, cols = np.mgrid[:size, :size]
  disk, bar, square, column = present > 0
  boxes = {}
  if disk:
    cy, cx = rng.integers(6, size - 6, 2)
    image[(rows - cy) ** 2 + (cols - cx) ** 2 <= 16] = 250
    boxes["disk"] = (cy - 4, cy + 5, cx - 4, cx + 5)
  if bar:
    r, c = rng.integers(2, size - 4), rng.integers(1, size - 17)
    image[r:r + 3, c:c + 16] = 250
    boxes["bar"] = (r, r + 3, c, c + 16)
  if square:
    r, c = rng.integers(1, size - 9, 2)
    image[r:r + 8, c:c + 8] = 0
    boxes["square"] = (r, r + 8, c, c + 8)
  if column:
    r, c = rng.integers(1, size - 17), rng.integers(2, size - 4)
    image[r:r + 16, c:c + 3] = 250
    boxes["column"] = (r, r + 16, c, c + 3)
  return np.clip(image, 0, 255).astype(np.uint8), boxes


def findings_images(rng: np.random.Generator,
                    count: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Box]]]:
  """`count` images of FINDINGS (the bar co-occurs with the disk), their labels [N, 4] of
  1.0 and 0.0, and the boxes of the findings drawn."""
  disk = rng.random(count) < 0.4
  bar = rng.random(count) < np.where(disk, 0.6, 0.25)
  found = np.stack([disk, bar, rng.random(count) < 0.35, rng.random(count) < 0.3], 1)
  found = found.astype(np.float32)
  drawn = [draw_findings(rng, row) for row in found]
  return np.stack([image for image, _ in drawn]), found, [boxes for _, boxes in drawn]


def write_findings_npz(path: pathlib.Path, sizes=(("train", 384), ("val", 96), ("test", 128)),
                       seed: int = 0) -> dict[str, np.ndarray]:
  """A ChestMNIST-like file of generated findings (labels [N, 4]): 10% of the labels are
  NaN, and 5% of the training labels -1 (uncertain)."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, count in sizes:
    images, found, _ = findings_images(rng, count)
    hide = rng.random(found.shape)
    found[hide < 0.1] = np.nan
    if split == "train":
      found[(hide >= 0.1) & (hide < 0.15)] = -1.0
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, found
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  return arrays


def findings_trainer_command(workdir: pathlib.Path, npz_path: pathlib.Path,
                             *flags: str) -> list[str]:
  """`python -m xray_jax.main` on `configs/chestmnist.py:runlocal` reading a generated file of
  FINDINGS (`write_findings_npz`) with a 2-block CNN on 16x16 images, logging to stderr."""
  return [sys.executable, "-m", "xray_jax.main", "--alsologtostderr", f"--workdir={workdir}",
          "--config=configs/chestmnist.py:runlocal,model=cnn",
          f"--config.data.npz_path={npz_path}", "--config.data.checksum=",
          f"--config.data.class_names={','.join(FINDINGS)}", "--config.data.image_size=16",
          "--config.model.widths=4,8", "--config.model.dense=8", *flags]


def chestmnist_config(npz_path: pathlib.Path) -> ml_collections.ConfigDict:
  """configs/chestmnist.py:runlocal reading a generated file of FINDINGS at 32 px."""
  config = load_config_module(REPO_ROOT / "configs" / "chestmnist.py").get_config(
      "runlocal,model=cnn")
  config.data.update(dict(npz_path=str(npz_path), checksum="", class_names=",".join(FINDINGS),
                          image_size=32, intensity="none"))
  config.data.augment = no_augment()
  return config


def findings_training_config(npz_path: pathlib.Path,
                             num_train_steps: int = 200) -> ml_collections.ConfigDict:
  """`chestmnist_config` with a 3-block CNN that learns every finding in 200 steps (ROC AUC
  near 1 on held-out images), its test split as the eval set "test"."""
  config = chestmnist_config(npz_path)
  config.data.eval_sets = "test=test"
  config.model.update(dict(widths=(8, 16, 32), dense=(16,), dropout=0.0))
  config.optimizer.update(dict(learning_rate=1e-2, warmup_epochs=0.0, schedule="constant"))
  config.training.update(dict(global_batch_size=32, num_train_steps=num_train_steps,
                              log_every_steps=50, eval_every_steps=100,
                              checkpoint_every_steps=num_train_steps, eval_batch_size=64))
  return config
