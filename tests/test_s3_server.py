"""scripts/dev/s3_server.py: the dev SeaweedFS's CLI (daemon, pidfile, env files, idempotent start/stop)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import boto3
import pytest
from s3_fixtures import run_script, s3_server_module


def test_port_blocks_do_not_overlap() -> None:
    a, b = s3_server_module.ports_for(8333), s3_server_module.ports_for(8342)
    assert len(set(a.values())) == len(a) and not set(a.values()) & set(b.values())
    with pytest.raises(Exception, match="does not leave room"):
        s3_server_module.ports_for(60000)


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_cli_start_stop(tmp_path: Path, s3_server: Any) -> None:
    base = s3_server_module.free_base_port()
    pidfile, env_file, ro_file = tmp_path / "s3.pid", tmp_path / "s3.env", tmp_path / "ro.env"
    args: list[str | Path] = ["start", "--dir", tmp_path / "data", "--port", str(base), "--pidfile", pidfile]
    started = run_script("dev/s3_server.py", *args, "--env-file", env_file, "--readonly-env-file", ro_file)
    try:
        assert started.rc == 0, started.stderr
        s = started.summary
        pid = int(pidfile.read_text())
        assert s["changed"] is True and s["pid"] == pid and s["endpoint_url"] == f"http://127.0.0.1:{base}"
        assert os.getpgid(pid) == pid  # its own process group: stop ends all of it
        env = _read_env(env_file)
        assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
        for f in (env_file, ro_file, tmp_path / "data" / "identities.json"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert env["AWS_SECRET_ACCESS_KEY"] not in started.stdout + started.stderr

        def client(e: dict[str, str]) -> Any:
            return boto3.client("s3", endpoint_url=e["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                                aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"])

        client(env).create_bucket(Bucket="dev-bucket")
        ro = client(_read_env(ro_file))
        assert [b["Name"] for b in ro.list_buckets()["Buckets"]] == ["dev-bucket"]
        with pytest.raises(Exception, match="AccessDenied"):
            ro.put_object(Bucket="dev-bucket", Key="k", Body=b"x")

        again = run_script("dev/s3_server.py", *args)
        assert again.rc == 0 and again.summary["changed"] is False and again.summary["pid"] == pid

        clash = run_script("dev/s3_server.py", "start", "--dir", tmp_path / "other", "--port", str(base + 3))
        assert clash.rc == 2 and "are in use" in clash.error
    finally:
        stopped = run_script("dev/s3_server.py", "stop", "--pidfile", pidfile)
    assert stopped.rc == 0 and stopped.summary["changed"] is True
    assert not pidfile.exists() and not s3_server_module._alive(pid)  # gone (or a zombie awaiting its reaper)
    assert run_script("dev/s3_server.py", "stop", "--pidfile", pidfile).summary["changed"] is False

    # Data and keys survive a restart.
    restarted = run_script("dev/s3_server.py", *args, "--env-file", env_file)
    try:
        assert restarted.rc == 0, restarted.stderr
        assert _read_env(env_file) == env
        assert [b["Name"] for b in client(env).list_buckets()["Buckets"]] == ["dev-bucket"]
    finally:
        run_script("dev/s3_server.py", "stop", "--pidfile", pidfile)
