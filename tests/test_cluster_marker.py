"""The `cluster` marker: tests that need system tools skip with what to install, and fail
instead under XRAY_JAX_REQUIRE_CLUSTER_TESTS=1, as CI sets it."""

from helpers import REQUIRE_CLUSTER_TESTS, cluster_test_verdict

SLURM = ("slurmctld", "slurmd", "sbatch", "/usr/sbin/munged")


def _which(found: set[str]):
  return lambda tool: f"/usr/bin/{tool}" if tool in found else None


def test_runs_when_every_tool_is_there():
  assert cluster_test_verdict(SLURM, True, {}, _which(set(SLURM)), euid=0) is None
  assert cluster_test_verdict(("shellcheck",), False, {}, _which({"shellcheck"}),
                              euid=1000) is None


def test_skips_naming_the_missing_tools_and_their_packages():
  verdict = cluster_test_verdict(SLURM, True, {}, _which({"sbatch"}), euid=0)
  assert verdict == ("skip", "needs slurmctld, slurmd, /usr/sbin/munged "
                             "(apt-get install munge slurm-wlm)")


def test_skips_without_root_where_the_daemons_need_it():
  verdict = cluster_test_verdict(SLURM, True, {}, _which(set(SLURM)), euid=1000)
  assert verdict == ("skip", "needs root, to start the daemons")


def test_fails_instead_where_ci_requires_the_cluster_tests():
  verdict = cluster_test_verdict(("shellcheck",), False, {REQUIRE_CLUSTER_TESTS: "1"},
                                 _which(set()), euid=0)
  assert verdict == ("fail", "needs shellcheck (apt-get install shellcheck)")
