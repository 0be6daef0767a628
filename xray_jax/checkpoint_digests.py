"""Digests of a finished checkpoint's files, so that damage on disk is found before a restore.

Orbax makes a checkpoint appear only when it is complete, but it does not notice bytes that
change later (a bad disk, a partial copy, a truncated sync). After each save the trainer
records the size and SHA-256 of every file of the step's folder; a restore first checks them.
"""

import hashlib
import json
import pathlib

from xray_jax import files

DIGESTS_FILE = "xray_digests.json"
_CHUNK_BYTES = 1 << 22


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def _checkpoint_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != DIGESTS_FILE)


def write(step_dir: pathlib.Path) -> None:
  """Records the size and SHA-256 of every file below `step_dir`."""
  digests = {str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in _checkpoint_files(step_dir)}
  files.write_atomically(step_dir / DIGESTS_FILE, json.dumps(digests, indent=0))


def has_digests(step_dir: pathlib.Path) -> bool:
  return (step_dir / DIGESTS_FILE).is_file()


def problems(step_dir: pathlib.Path) -> list[str]:
  """What differs from the recorded digests: missing, truncated or changed files (empty
  when intact). A checkpoint without digests (older runs) cannot be checked: empty too."""
  if not has_digests(step_dir):
    return []
  try:
    recorded = json.loads((step_dir / DIGESTS_FILE).read_text())
  except (OSError, ValueError) as e:
    return [f"{DIGESTS_FILE} is unreadable ({e})"]
  found = []
  for name, expected in recorded.items():
    path = step_dir / name
    if not path.is_file():
      found.append(f"{name} is missing")
    elif (size := path.stat().st_size) != expected["bytes"]:
      found.append(f"{name} has {size} bytes, {expected['bytes']} were written (truncated "
                   "or overwritten)")
    elif _sha256(path) != expected["sha256"]:
      found.append(f"{name} differs from what was written (damaged bytes)")
  return found
