"""The compose topology: the same three roles, each in its own container.

`docker-compose.yml` at the project's top is the whole definition (users
run it with plain `docker compose up`); this module only drives it for
`kalab run --runtime compose`: a project name of the run's own, the
scenario and results folder passed by environment, the observer's exit code
as the verdict, and `docker compose down -v` whatever happens, so no
container, network or volume of the run is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kalab import handoff
from kalab.runtime.state import RunState

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


class ComposeError(Exception):
    pass


def docker_problem() -> str | None:
    """Why compose cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        return "docker compose (v2) is not installed"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=20)
    if info.returncode:
        return "no Docker engine answers (is dockerd running?)"
    return None


class ComposeLab:
    name = "compose"

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.project = f"kalab-{state.run_id}"

    def _compose(self, *args: str, log: Path | None = None, env: dict | None = None,
                 timeout: float | None = None) -> int:
        argv = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        environment = {**os.environ, **(env or {})}
        if log is None:
            return subprocess.run(argv, capture_output=True, env=environment,
                                  timeout=timeout).returncode
        with open(log, "ab") as out:
            return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                  stdin=subprocess.DEVNULL, timeout=timeout).returncode

    def run(self, scenario_file: Path, results: Path, timeout: float,
            student: str | None = None) -> int:
        """`docker compose up` until the observer's verdict; its exit code."""
        # The observer writes into results/ as under plain `docker compose up`, in the
        # folder named here (the run's own, made by `kalab run`).
        env = {"KALAB_SCENARIO": str(scenario_file.resolve()),
               "KALAB_RESULTS": str(results.resolve().parent),
               "KALAB_RUN_NAME": results.name,
               "KALAB_STUDENT": student or "",
               "KALAB_PROJECT": self.project}
        self.state.add_compose_project(self.project)
        log = results / handoff.COMPOSE_LOG
        code = self._compose("build", "--quiet", log=log, env=env, timeout=timeout)
        if code:
            raise ComposeError(f"docker compose build failed (see {log})")
        return self._compose("up", "--abort-on-container-exit", "--exit-code-from", "observer",
                             "--no-build", "--no-color", log=log, env=env, timeout=timeout)

    def down(self) -> None:
        down_project(self.project)


def down_project(project: str) -> None:
    subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "-p", project, "down", "-v",
                    "--remove-orphans", "--timeout", "5"], capture_output=True,
                   env={**os.environ, "KALAB_PROJECT": project})
