import os

import pytest
import torch
from hypothesis import HealthCheck, settings


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The suite never reads or writes the user's escnet cache (text features, converted models)."""
    previous = os.environ.get("ESCNET_CACHE")
    os.environ["ESCNET_CACHE"] = str(tmp_path_factory.mktemp("escnet-cache"))
    yield
    if previous is None:
        os.environ.pop("ESCNET_CACHE", None)
    else:
        os.environ["ESCNET_CACHE"] = previous


@pytest.fixture
def restore_threads(monkeypatch):
    """Code under test may set the process's thread count and its OMP/MKL environment
    (escnet.runtime.set_threads); give the test process its own back."""
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MKL_NUM_THREADS", os.environ.get("MKL_NUM_THREADS", "1"))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# CI guards (docs/testing.md). Under CI (environment variable CI set to anything but 0/false/no,
# as .ci/run and most CI services do, or `pytest --fail-on-skip`):
# - a skipped test whose reason is not in ALLOWED_SKIPS fails the run: a broken import or a missing
#   dependency can no longer turn a test into a skip and CI green;
# - hypothesis runs the "ci" profile: derandomized (a fixed seed), no example database, so a run is
#   reproducible and the property tests' floors (tests/engine/test_inference_properties.py) are stable.

# substring of the skip reason -> why that skip is expected somewhere CI runs
ALLOWED_SKIPS = {
    "needs a CUDA GPU": "CI machines have no GPU (the CUDA tests run on a GPU machine: docs/testing.md)",
    "without a GPU": "checks the message shown without a GPU; skipped on a machine that has one",
}

# too_slow: drawing inputs on a loaded machine can take seconds; that says nothing about the code under test
settings.register_profile("ci", derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", print_blob=True, suppress_health_check=[HealthCheck.too_slow])


def ci_mode(config) -> bool:
    value = os.environ.get("CI", "").strip().lower()
    return config.getoption("fail_on_skip") or value not in ("", "0", "false", "no")


def pytest_addoption(parser):
    parser.addoption("--fail-on-skip", action="store_true", default=False,
                     help="fail the run on a skip whose reason is not in tests/conftest.py ALLOWED_SKIPS "
                          "(on by default when the environment variable CI is set)")


def pytest_configure(config):
    settings.load_profile("ci" if ci_mode(config) else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
    config.pluginmanager.register(SkipGuard(config), "escnet-skip-guard")


class SkipGuard:
    """Records skips whose reason is not allowed; under CI, lists them and fails the run."""

    def __init__(self, config):
        self.config = config
        self.unexpected: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
            reason = reason.removeprefix("Skipped: ")
            if not any(allowed in reason for allowed in ALLOWED_SKIPS):
                self.unexpected.append((report.nodeid, reason))

    def pytest_collectreport(self, report):  # a module-level skip (e.g. importorskip at the top of a file)
        self.pytest_runtest_logreport(report)

    def pytest_terminal_summary(self, terminalreporter):
        if self.unexpected and ci_mode(self.config):
            terminalreporter.section("unexpected skips: CI fails on these (allow-list: tests/conftest.py "
                                     "ALLOWED_SKIPS)", red=True)
            for nodeid, reason in self.unexpected:
                terminalreporter.line(f"{nodeid}: {reason}")

    def pytest_sessionfinish(self, session):
        if self.unexpected and ci_mode(self.config) and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
