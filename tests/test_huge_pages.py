"""Restarting a binary with glibc's malloc on transparent huge pages."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from xray_jax.speed import huge_pages

GLIBC = (2, 36)


def test_adds_the_tunable_where_it_helps():
  environ = huge_pages.huge_pages_environ({"HOME": "/root"}, GLIBC, "madvise")
  assert environ == {"HOME": "/root", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_keeps_other_tunables():
  environ = huge_pages.huge_pages_environ(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC, "madvise")
  assert environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, glibc, mode", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # The user's choice.
    ({}, None, "madvise"),  # Another C library.
    ({}, (2, 34), "madvise"),  # No such tunable yet.
    ({}, GLIBC, "never"),
    ({}, GLIBC, "always"),  # Huge pages without advice already.
    ({}, GLIBC, None),  # No transparent huge pages in this kernel.
])
def test_no_restart_where_it_cannot_help(environ, glibc, mode):
  assert huge_pages.huge_pages_environ(environ, glibc, mode) is None


def test_reads_the_kernel_mode(tmp_path):
  mode_file = tmp_path / "enabled"
  mode_file.write_text("always [madvise] never\n")
  assert huge_pages.thp_mode(str(mode_file)) == "madvise"
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


def test_reads_the_glibc_version():
  version = huge_pages.glibc_version()
  assert version is None or (len(version) == 2 and version >= (2, 0))


_CHILD = textwrap.dedent("""
    import ctypes, os, resource, sys
    from xray_jax.speed import huge_pages
    pid = os.getpid()
    huge_pages.restart_with_huge_pages()
    faults = []
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    for _ in range(3):  # Allocate, touch and free 256 MB, as XLA does a step's temporaries.
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      buffer = libc.malloc(2**28)
      ctypes.memset(buffer, 1, 2**28)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
      libc.free(buffer)
    print(os.environ.get("GLIBC_TUNABLES"), pid, os.getpid(), max(faults[1:]), sys.argv[1:])
""")


def _run_child(tmp_path: pathlib.Path, **env: str) -> list[str]:
  script = tmp_path / "child.py"
  script.write_text(_CHILD)
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  result = subprocess.run([sys.executable, str(script), "--flag=1"], env={**environ, **env},
                          capture_output=True, text=True, check=True)
  return result.stdout.split(maxsplit=4)


def test_restart_keeps_the_command_and_process_and_stops_the_faults(tmp_path):
  tunables, pid_before, pid_after, faults, argv = _run_child(tmp_path)
  assert argv == "['--flag=1']\n"
  assert pid_before == pid_after  # Re-executed in place: launchers still see their process.
  if huge_pages.huge_pages_environ({}, huge_pages.glibc_version(), huge_pages.thp_mode()):
    assert tunables == "glibc.malloc.hugetlb=1"
    _, _, _, faults_without, _ = _run_child(tmp_path, GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    assert int(faults_without) > 60_000  # 256 MB in 4 KiB pages: 65,536 faults.
    assert int(faults) < int(faults_without) / 20
  else:  # This kernel or C library gives nothing to restart for.
    assert tunables == "None"
