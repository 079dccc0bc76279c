"""pytest fixtures for a real S3: one SeaweedFS per test session (scripts/dev/s3_server.py), on a free port block.

Enable in tests/conftest.py with `pytest_plugins = ["s3_fixtures"]`. Fixtures:
- `s3_server` (session): the running `Server` (endpoint_url, admin/readonly credentials, client()).
- `s3_env` / `s3_readonly_env`: sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for the admin /
  read-only identity in os.environ (monkeypatch) with no profile or instance role to fall back on; returns them.
- `s3_bucket`: a fresh, empty bucket per test (its name).
Helpers: `run_script(name, *args, env=...)` runs `scripts/<name>` in a subprocess, `run_main(main, argv, capsys)`
runs a CLI in-process; both return a `ScriptResult` (rc, `.summary` = the JSON line, `.error` = the one error line).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _load_s3_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("imagenet_fleet_dev_s3_server", SCRIPTS / "dev" / "s3_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


s3_server_module = _load_s3_server()

# No profile, config file or instance metadata to fall back on: a test sees exactly the credentials it sets.
_ISOLATION = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_MAX_ATTEMPTS": "2",
}
_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = s3_server_module.start(tmp_path_factory.mktemp("seaweedfs"), None)
    try:
        yield server
    finally:
        server.stop()


def _set_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> dict[str, str]:
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    full = {**_ISOLATION, **env}
    for name, value in full.items():
        monkeypatch.setenv(name, value)
    return full


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return _set_env(monkeypatch, s3_server.env())


@pytest.fixture
def s3_readonly_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return _set_env(monkeypatch, s3_server.env(readonly=True))


@pytest.fixture
def s3_bucket(s3_server: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@dataclass(frozen=True)
class ScriptResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON summary: the last line of stdout."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no stdout; stderr:\n{self.stderr}"
        value = json.loads(lines[-1])
        assert isinstance(value, dict)
        return value

    @property
    def error(self) -> str:
        """The one `error: ... (fix: ...)` line of a UserError."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, f"expected one error line, got stderr:\n{self.stderr}"
        assert "(fix: " in lines[0]
        return lines[0]


def run_script(name: str, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None,
               timeout: float = 120) -> ScriptResult:
    """Run `scripts/<name>` with this Python, in `env` (default: this process's environment)."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], env=dict(env or os.environ),
                          capture_output=True, text=True, timeout=timeout, check=False)
    return ScriptResult(proc.returncode, proc.stdout, proc.stderr)


def run_main(main: Callable[[Sequence[str]], int], argv: Sequence[str | os.PathLike[str]],
             capsys: pytest.CaptureFixture[str]) -> ScriptResult:
    """Run a CLI's `main(argv)` in this process (faster than `run_script`), capturing stdout and stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return ScriptResult(rc, out, err)
