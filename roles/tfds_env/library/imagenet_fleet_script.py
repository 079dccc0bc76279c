#!/usr/bin/python
"""Run one of the bundle's scripts with the host's venv and report its JSON summary."""

from __future__ import annotations

DOCUMENTATION = r"""
module: imagenet_fleet_script
short_description: Run an imagenet-fleet script in the host's venv and return its JSON summary
description:
  - Runs C(python script args...) with the venv's interpreter. The script prints one JSON object as the last
    line of stdout (its summary) and, on bad input, one line C(error: <cause> (fix: <fix>)) on stderr.
  - C(changed) is the summary's C(changed) field. In check mode the script gets C(--check) (it reports what it
    would do and changes nothing); read-only scripts (I(read_only=true)) run as they are.
  - I(secret_env) is passed in the environment and never logged (no_log). The scripts never print it.
options:
  python:
    description: The venv's interpreter.
    type: path
    required: true
  script:
    description: The script to run.
    type: path
    required: true
  args:
    description: Its arguments.
    type: list
    elements: str
    default: []
  env:
    description: Extra environment variables.
    type: dict
    default: {}
  secret_env:
    description: Environment variables that hold secrets (credentials); never logged.
    type: dict
    default: {}
  read_only:
    description: The script changes nothing, so check mode runs it as it is instead of adding C(--check).
    type: bool
    default: false
author: imagenet-fleet
"""

RETURN = r"""
summary:
  description: The script's JSON summary (its last line of stdout).
  returned: success
  type: dict
stderr_tail:
  description: The last lines the script wrote to stderr (its log).
  returned: always
  type: list
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def _summary(stdout: str) -> dict | None:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        parsed = json.loads(lines[-1])
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "python": {"type": "path", "required": True},
            "script": {"type": "path", "required": True},
            "args": {"type": "list", "elements": "str", "default": []},
            "env": {"type": "dict", "default": {}},
            "secret_env": {"type": "dict", "default": {}, "no_log": True},
            "read_only": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    for path in (params["python"], params["script"]):
        if os.path.exists(path):
            continue
        if module.check_mode:  # the tfds_env role would have installed it: everything after it would run
            module.exit_json(changed=not params["read_only"], summary={}, stderr_tail=[],
                             msg=f"{path} does not exist yet (check mode): the tfds_env role would install it")
        module.fail_json(msg=f"{path} not found (fix: run the tfds_env role first)")
    argv = [params["python"], params["script"], *params["args"]]
    if module.check_mode and not params["read_only"]:
        argv.append("--check")
    env = {str(k): str(v) for k, v in {**params["env"], **params["secret_env"]}.items()}
    rc, stdout, stderr = module.run_command(argv, environ_update=env)
    stderr_tail = stderr.splitlines()[-20:]
    summary = _summary(stdout)
    if rc != 0:
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        msg = errors[-1] if errors else f"{os.path.basename(params['script'])} failed (rc={rc})"
        module.fail_json(msg=msg, rc=rc, summary=summary or {}, stderr_tail=stderr_tail, cmd=argv)
    if summary is None:
        module.fail_json(msg="the script printed no JSON summary", rc=rc, stderr_tail=stderr_tail, cmd=argv)
    module.exit_json(changed=bool(summary.get("changed", False)), summary=summary, stderr_tail=stderr_tail)


if __name__ == "__main__":
    main()
