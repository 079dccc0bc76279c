"""The contract every CLI in scripts/ shares (`imagenet_fleet.cli`), run in real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

# A CLI body run through `cli.run`; an exit hook registered before it runs after the CLI's own (atexit is last in,
# first out) and reports what the interpreter's last collections would scan.
PROGRAM = textwrap.dedent(
    """
    import atexit, gc, json, sys
    sys.path.insert(0, {scripts!r})
    from imagenet_fleet import cli
    from imagenet_fleet.errors import UserError

    atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count(), file=sys.stderr))

    def body():
        if sys.argv[1] == "bad":
            raise UserError("the input is bad", "give a good one")
        print("progress goes elsewhere", file=sys.stderr)
        return {{"changed": True, "n": 3}}

    sys.exit(cli.run(body) or cli.run(body))
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM.format(scripts=str(SCRIPTS)), mode],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_summary_is_the_last_stdout_line() -> None:
    proc = _run("good")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"changed": True, "n": 3}
    assert "progress goes elsewhere" in proc.stderr


def test_user_error_is_one_line_and_exit_2() -> None:
    proc = _run("bad")
    assert proc.returncode == 2
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the input is bad (fix: give a good one)"]
    assert "Traceback" not in proc.stderr


def test_exit_skips_the_collectors_scan_of_live_objects() -> None:
    """The objects alive at exit are frozen before the interpreter's last collections (once, though `run` ran
    twice), whichever way the body ended."""
    for mode in ("good", "bad"):
        proc = _run(mode)
        frozen = [line for line in proc.stderr.splitlines() if line.startswith("frozen at exit:")]
        assert len(frozen) == 1, proc.stderr
        assert int(frozen[0].split(":")[1]) > 1000, frozen  # (the interpreter's own modules alone hold thousands)
