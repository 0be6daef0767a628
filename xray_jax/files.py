"""Writing files that other processes may be reading."""

import pathlib


def write_atomically(path: pathlib.Path, content: str | bytes) -> None:
  """Writes text or bytes to `path` through a temporary file and a rename, so a reader (a
  watching evaluator, a resumed run) never sees a half-written file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  if isinstance(content, bytes):
    tmp.write_bytes(content)
  else:
    tmp.write_text(content)
  tmp.replace(path)
