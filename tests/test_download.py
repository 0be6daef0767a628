"""Downloads against a local HTTP server: checksums, resume, reuse, mirrors and offline errors."""

import hashlib
import http.server
import socket
import threading

import pytest
from helpers import tiny_config

from xray_jax import config_checks, errors
from xray_jax.data import download

PAYLOAD = bytes(range(256)) * 40  # 10 KiB, every byte value.
SHA256 = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves PAYLOAD at any path, honouring `Range: bytes=N-`.

  The first `server.cuts` responses stop after `server.cut_bytes` body bytes and close the
  connection, as a dropped transfer would.
  """

  def do_GET(self):
    self.server.requests.append((self.path, self.headers.get("Range")))
    start = 0
    if self.headers.get("Range"):
      start = int(self.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    body = PAYLOAD[start:]
    self.send_response(206 if start else 200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.server.cuts > 0:
      self.server.cuts -= 1
      self.wfile.write(body[:self.server.cut_bytes])
      self.close_connection = True
      return
    self.wfile.write(body)

  def log_message(self, *args):
    del args  # Quiet test output.


@pytest.fixture
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.requests, httpd.cuts, httpd.cut_bytes = [], 0, 0
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def _url(server, name: str = "data.npz") -> str:
  return f"http://127.0.0.1:{server.server_port}/files/{name}?download=1"


def _closed_port_url(name: str = "data.npz") -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/{name}"


@pytest.mark.parametrize("checksum", [SHA256, MD5, ""], ids=["sha256", "md5", "none"])
def test_download_is_verified_then_reused(server, tmp_path, checksum):
  path = download.fetch(_url(server), checksum, tmp_path / "cache")
  assert path == tmp_path / "cache" / "data.npz"
  assert path.read_bytes() == PAYLOAD
  assert download.fetch(_url(server), checksum, tmp_path / "cache") == path
  assert len(server.requests) == 1  # The second call found the verified copy.


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
  wrong = "sha256:" + "0" * 64
  with pytest.raises(errors.DataError) as e:
    download.fetch(_url(server), wrong, tmp_path)
  message = str(e.value)
  assert _url(server) in message and "0" * 64 in message
  assert SHA256.removeprefix("sha256:") in message
  assert not list(tmp_path.iterdir())


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path):
  (tmp_path / "data.npz").write_bytes(b"truncated")
  assert download.fetch(_url(server), MD5, tmp_path).read_bytes() == PAYLOAD
  assert len(server.requests) == 1


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
  server.cuts, server.cut_bytes = 2, 3000
  path = download.fetch(_url(server), SHA256, tmp_path)
  assert path.read_bytes() == PAYLOAD
  assert [r for _, r in server.requests] == [None, "bytes=3000-", "bytes=6000-"]
  assert not (tmp_path / "data.npz.part").exists()


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
  (tmp_path / "data.npz.part").write_bytes(PAYLOAD[:4000])
  assert download.fetch(_url(server), SHA256, tmp_path).read_bytes() == PAYLOAD
  assert [r for _, r in server.requests] == ["bytes=4000-"]


def test_local_path_and_file_url_are_used_in_place(tmp_path):
  path = tmp_path / "mine.npz"
  path.write_bytes(PAYLOAD)
  assert download.fetch(str(path), SHA256, tmp_path / "cache") == path
  assert download.fetch(path.as_uri(), MD5, tmp_path / "cache") == path
  with pytest.raises(errors.DataError, match="checksum mismatch"):
    download.fetch(str(path), "md5:" + "f" * 32, tmp_path / "cache")
  assert path.exists()  # A user's own file is never deleted.
  with pytest.raises(errors.DataError, match="no such file"):
    download.fetch(str(tmp_path / "missing.npz"), "", tmp_path / "cache")


def test_mirror_folder_is_used_when_the_url_is_unreachable(tmp_path):
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  (mirror / "data.npz").write_bytes(PAYLOAD)
  path = download.fetch(_closed_port_url(), SHA256, tmp_path / "cache", mirror_url=str(mirror))
  assert path == mirror / "data.npz"


def test_mirror_server_is_tried_before_the_url(server, tmp_path):
  mirror = f"http://127.0.0.1:{server.server_port}/mirror"
  path = download.fetch(_closed_port_url(), SHA256, tmp_path, mirror_url=mirror)
  assert path.read_bytes() == PAYLOAD
  assert [p for p, _ in server.requests] == ["/mirror/data.npz"]


def test_unreachable_says_where_to_put_which_file(tmp_path):
  url = _closed_port_url("archive.bin")
  with pytest.raises(errors.DataError) as e:
    download.fetch(url, MD5, tmp_path / "cache", filename="Archive.zip",
                   manual_hint=", or use the folder layout")
  message = str(e.value)
  assert url in message
  assert f"put Archive.zip ({MD5}) at {tmp_path / 'cache' / 'Archive.zip'}" in message
  assert message.endswith(", or use the folder layout")


def test_bad_checksum_format_is_a_config_error(tmp_path):
  (tmp_path / "f").write_bytes(PAYLOAD)
  with pytest.raises(errors.ConfigError, match="md5:HEX or sha256:HEX"):
    download.fetch(str(tmp_path / "f"), "crc32:1234", tmp_path)


@pytest.mark.parametrize("checksum", ["crc32:1234", "md5:", "d41d8cd98f00b204e9800998ecf8427e"])
def test_config_check_names_a_bad_checksum(tmp_path, checksum):
  config = tiny_config(tmp_path)
  config.data.checksum = checksum
  with pytest.raises(errors.ConfigError, match=r"config.data.checksum=.*md5:HEX or sha256:HEX"):
    config_checks.check_config(config)
