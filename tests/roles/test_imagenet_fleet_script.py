"""The module every role runs its scripts through (roles/tfds_env/library/imagenet_fleet_script.py), run by a
real ansible-playbook on localhost against a small script that behaves like ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-VALUE-that-must-never-be-logged"

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    args = sys.argv[1:]
    sys.stderr.write("log line\\n")
    if "--fail" in args:
        sys.stderr.write("error: no object at s3://b/k (fix: upload it)\\n")
        sys.exit(2)
    print(json.dumps({"changed": "--change" in args, "check": "--check" in args,
                      "secret_seen": os.environ.get("SECRET_VAR") == os.environ.get("EXPECTED")}))
    """
)


def run_module(
    tmp_path: Path, args: list[str], *, check: bool = False
) -> tuple[subprocess.CompletedProcess[str], dict]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent(f"""
        - hosts: localhost
          gather_facts: false
          tasks:
            - imagenet_fleet_script:
                python: {sys.executable}
                script: {script}
                args: {json.dumps(args)}
                env: {{EXPECTED: "{SECRET}"}}
                secret_env: {{SECRET_VAR: "{SECRET}"}}
              register: result
              ignore_errors: true
            - ansible.builtin.copy:
                content: "{{{{ result | to_json }}}}"
                dest: {tmp_path / "result.json"}
                mode: "0644"
              check_mode: false
    """))
    env = {**os.environ, "ANSIBLE_LIBRARY": str(REPO / "roles/tfds_env/library"), "ANSIBLE_NOCOLOR": "1"}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-vvv", "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={sys.executable}",
           str(playbook)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return proc, json.loads((tmp_path / "result.json").read_text())


def test_summary_drives_changed_and_secret_reaches_the_script_but_no_log(tmp_path: Path) -> None:
    proc, result = run_module(tmp_path, ["--change"])
    assert result["changed"] is True and result["summary"]["changed"] is True
    assert result["summary"]["secret_seen"] is True
    assert result["stderr_tail"] == ["log line"]
    assert SECRET not in proc.stdout + proc.stderr


def test_check_mode_passes_check_to_the_script(tmp_path: Path) -> None:
    proc, result = run_module(tmp_path, [], check=True)
    assert result["summary"]["check"] is True and result["changed"] is False


def test_the_scripts_error_line_is_the_failure_message(tmp_path: Path) -> None:
    proc, result = run_module(tmp_path, ["--fail"])
    assert result["failed"] is True
    assert result["msg"] == "error: no object at s3://b/k (fix: upload it)"
    assert SECRET not in proc.stdout + proc.stderr
