"""Fetching a dataset file once: resumable HTTP download, checksum, local copies and mirrors."""

import hashlib
import http.client
import pathlib
import shutil
import urllib.error
import urllib.parse
import urllib.request

from absl import logging

from xray_jax import errors

ALGORITHMS = ("md5", "sha256")
ATTEMPTS = 4  # A transfer cut short is resumed from where it stopped, this many tries in all.
CHUNK_BYTES = 1 << 20
# Some hosts (Mendeley Data) refuse urllib's default agent.
HEADERS = {"User-Agent": "Mozilla/5.0 (compatible; xray_jax)"}


def parse_checksum(checksum: str) -> tuple[str, str]:
  """"md5:HEX" or "sha256:HEX" -> (algorithm, lower-case hex digest)."""
  algorithm, _, digest = checksum.partition(":")
  if algorithm not in ALGORITHMS or not digest:
    raise errors.ConfigError(f"checksum {checksum!r}: expected md5:HEX or sha256:HEX")
  return algorithm, digest.lower()


def file_digest(path: pathlib.Path, algorithm: str) -> str:
  digest = hashlib.new(algorithm)
  with path.open("rb") as f:
    while chunk := f.read(CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def _verify(path: pathlib.Path, checksum: str, source: str, downloaded: bool) -> None:
  """Raises DataError when `path` does not match `checksum` ("" accepts any file).

  A mismatching download is deleted, so the next run fetches it again; a user's own
  file is left alone.
  """
  if not checksum:
    return
  algorithm, expected = parse_checksum(checksum)
  actual = file_digest(path, algorithm)
  if actual != expected:
    if downloaded:
      path.unlink()
    raise errors.DataError(
        f"{source}: {algorithm} checksum mismatch: expected {expected}, got {actual}"
        + (" (download deleted)" if downloaded else ""))


def _local_path(url: str) -> pathlib.Path | None:
  """The file a local path or file:// URL names; None for a remote URL."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme == "file":
    return pathlib.Path(urllib.request.url2pathname(parsed.path))
  if parsed.scheme in ("http", "https", "ftp"):
    return None
  return pathlib.Path(url).expanduser()


def remove_empty_folders(folders: list[pathlib.Path]) -> None:
  """Removes those of `folders` (deepest first) that exist and are empty: what a failed
  attempt created and left unused."""
  for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
    if folder.is_dir() and not any(folder.iterdir()):
      folder.rmdir()


def _download(url: str, dest: pathlib.Path, timeout: float) -> None:
  """Downloads `url` to `dest` through `dest`.part, resuming a partial one with HTTP Range.

  Raises URLError when the server cannot be reached or refuses the file.
  """
  part = dest.with_name(dest.name + ".part")
  dest.parent.mkdir(parents=True, exist_ok=True)
  for attempt in range(1, ATTEMPTS + 1):
    offset = part.stat().st_size if part.exists() else 0
    headers = {**HEADERS, "Range": f"bytes={offset}-"} if offset else HEADERS
    request = urllib.request.Request(url, headers=headers)
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 206:
          offset = 0  # The server sent the whole file.
        length = response.headers.get("Content-Length")
        expected = None if length is None else offset + int(length)
        with part.open("ab" if offset else "wb") as f:
          shutil.copyfileobj(response, f, CHUNK_BYTES)
    except urllib.error.HTTPError as e:
      if e.code != 416 or not offset:
        raise
      expected = offset  # Range not satisfiable: the part file already holds every byte.
    except (OSError, http.client.HTTPException) as e:
      if isinstance(e, urllib.error.URLError):
        raise  # Unreachable: retrying the same server will not help.
      logging.warning("%s: transfer interrupted (%s); attempt %d of %d", url, e, attempt,
                      ATTEMPTS)
      continue
    size = part.stat().st_size
    if expected is None or size == expected:
      part.replace(dest)
      return
    # urllib returns a short body without an error when the server closes early.
    logging.warning("%s: got %d of %d bytes; attempt %d of %d", url, size, expected, attempt,
                    ATTEMPTS)
  raise urllib.error.URLError(f"transfer cut short {ATTEMPTS} times")


def fetch(
    url: str, checksum: str, cache_dir: str | pathlib.Path, mirror_url: str = "",
    filename: str = "", manual_hint: str = "", timeout: float = 60.0,
) -> pathlib.Path:
  """Returns a local copy of `url` that matches `checksum` ("md5:HEX", "sha256:HEX" or "").

  `url` may be a local path or file:// URL, used in place. A remote file is downloaded to
  `cache_dir` as `filename` (default: the URL's last path component) and reused from there.
  A `mirror_url` (server, file:// URL or folder holding that file name) is tried first.
  `manual_hint` ends the error raised when nothing can be fetched (another way to get the data).
  """
  local = _local_path(url)
  if local is not None:
    if not local.is_file():
      raise errors.DataError(f"{local}: no such file")
    _verify(local, checksum, str(local), downloaded=False)
    return local
  name = filename or pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name
  dest = pathlib.Path(cache_dir).expanduser().absolute() / name
  created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
  if dest.is_file():
    try:
      _verify(dest, checksum, str(dest), downloaded=True)
      return dest
    except errors.DataError as e:
      logging.warning("%s; downloading it again", e)
  candidates = ([f"{mirror_url.rstrip('/')}/{name}"] if mirror_url else []) + [url]
  failures = []
  for candidate in candidates:
    mirror_file = _local_path(candidate)
    if mirror_file is not None:
      if mirror_file.is_file():
        _verify(mirror_file, checksum, str(mirror_file), downloaded=False)
        return mirror_file
      failures.append(f"{mirror_file}: no such file")
      continue
    logging.info("Downloading %s to %s", candidate, dest)
    try:
      _download(candidate, dest, timeout)
    except urllib.error.URLError as e:
      failures.append(f"{candidate}: {e.reason}")
      continue
    if not checksum:
      logging.warning("%s: not verified (no checksum given); its sha256 is %s", candidate,
                      file_digest(dest, "sha256"))
    _verify(dest, checksum, candidate, downloaded=True)
    return dest
  remove_empty_folders(created)
  expected = f" ({checksum})" if checksum else ""
  raise errors.DataError(
      f"cannot fetch {name}: {'; '.join(failures)}. Offline, put {name}{expected} at {dest}, "
      f"or set config.data.mirror_url to a folder or server holding it{manual_hint}")
