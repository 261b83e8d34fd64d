"""The Kubernetes manifests: they render, validate offline, and ask for no more than they need.

`kubectl kustomize` renders each layout (the Job, a class of Jobs made by
make_class.py, the Deployment behind a Service); every document validates
against the Kubernetes API schemas of a recent release (kubernetes-validate,
offline); the images are the compose images; only the observer has a
capability (NET_RAW and NET_ADMIN) or runs as root; and the roles' arguments
parse with the roles' own parsers, so the manifests cannot drift from the code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

from kalab import handoff

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.30"  # the API version the manifests are checked against
LAYOUTS = ("base", "class", "service")


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: ./lab installs it (Debian's kubernetes-client)")
    return found


def render(folder: Path) -> list[dict]:
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pods(docs: list[dict]) -> list[dict]:
    return [doc["spec"]["template"]["spec"] for doc in docs
            if doc["kind"] in ("Job", "Deployment")]


def compose_images() -> set[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {service["image"].replace("${KALAB_TAG:-latest}", "latest")
            for service in compose["services"].values()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_renders_and_validates_against_the_api_schemas(layout):
    docs = render(DEPLOY / layout)
    assert docs
    for doc in docs:
        assert kubernetes_validate.validate(doc, KUBERNETES, strict=True) == KUBERNETES
    kinds = sorted(doc["kind"] for doc in docs)
    if layout == "service":
        assert {"Deployment", "Service", "Job"} <= set(kinds)
    else:
        assert "Job" in kinds


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_the_observer_captures_and_no_one_else_is_root(layout):
    for pod in pods(render(DEPLOY / layout)):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            context = container["securityContext"]
            caps = context["capabilities"]
            assert caps["drop"] == ["ALL"], container["name"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            if container["name"] == "observer":
                assert sorted(caps["add"]) == ["NET_ADMIN", "NET_RAW"]
                assert context["runAsUser"] == 0
            else:
                assert "add" not in caps, container["name"]
                assert context["runAsNonRoot"] is True and context["runAsUser"] != 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_images_are_the_compose_images(layout):
    images = {c["image"] for pod in pods(render(DEPLOY / layout)) for c in pod["containers"]}
    assert images <= compose_images()
    assert {c["name"] for pod in pods(render(DEPLOY / layout)) for c in pod["containers"]} \
        == {"server", "observer", "client"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_roles_arguments_parse_with_the_roles_parsers(layout, monkeypatch):
    """The manifests' args, $(VARS) filled in, as each role's own parser takes them."""
    for pod in pods(render(DEPLOY / layout)):
        for container in pod["containers"]:
            args = [arg.replace("$(KALAB_STUDENT)", "ada").replace("$(KALAB_RUN)", "run-1")
                    for arg in container["args"]]
            parser = handoff.role_arguments(container["name"])
            if container["name"] == "observer":
                for option in ("--interface", "--runtime", "--results"):
                    parser.add_argument(option)
                parser.add_argument("--report", action="store_true")
            else:
                parser.add_argument("--host")
            if container["name"] == "server":
                parser.add_argument("--tls-name", action="append")
            parsed = parser.parse_args(args)
            assert parsed.scenario == "/lab/scenario.yaml"


def test_the_bundled_scenario_copies_are_lab_yaml():
    for layout in ("base", "service"):
        assert (DEPLOY / layout / "scenario.yaml").read_text() == \
            (ROOT / "lab.yaml").read_text(), layout


def test_a_class_is_one_job_per_student_with_its_own_params(tmp_path):
    overlay = tmp_path / "class"
    overlay.mkdir()
    (tmp_path / "students.txt").write_text("# section 2\nada\nbob-2\n\ncyd # late\n")
    done = subprocess.run([sys.executable, str(DEPLOY / "class" / "make_class.py"),
                           "05-idle-gap", str(tmp_path / "students.txt"), "--out",
                           str(overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = render(overlay)
    jobs = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Job"}
    assert sorted(jobs) == ["kalab-run-ada", "kalab-run-bob-2", "kalab-run-cyd"]
    for name, job in jobs.items():
        student = name.removeprefix("kalab-run-")
        for container in job["spec"]["template"]["spec"]["containers"]:
            assert {"name": "KALAB_STUDENT", "value": student} in container["env"]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes["results"]["persistentVolumeClaim"]["claimName"] == \
            f"kalab-results-{student}"
        scenario = next(d for d in docs if d["kind"] == "ConfigMap" and
                        d["metadata"]["name"] == volumes["scenario"]["configMap"]["name"])
        assert "name: 05-idle-gap" in scenario["data"]["scenario.yaml"]
    bad = tmp_path / "bad.txt"
    bad.write_text("Ada\n")
    refused = subprocess.run([sys.executable, str(DEPLOY / "class" / "make_class.py"),
                              "05-idle-gap", str(bad), "--out", str(overlay)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "line 1" in refused.stderr


def test_the_committed_class_is_what_make_class_writes(tmp_path):
    overlay = tmp_path / "class"
    overlay.mkdir()
    subprocess.run([sys.executable, str(DEPLOY / "class" / "make_class.py"), "05-idle-gap",
                    str(DEPLOY / "class" / "students.txt"), "--out", str(overlay)],
                   check=True, capture_output=True, timeout=60)
    committed = DEPLOY / "class"
    made = sorted(p.relative_to(overlay) for p in overlay.rglob("*") if p.is_file())
    for path in made:
        mine, theirs = (overlay / path).read_text(), (committed / path).read_text()
        if path.name == "kustomization.yaml" and path.parent != Path("."):
            # the base is named relative to where the overlay is
            mine = mine.replace(os.path.relpath(DEPLOY / "base", overlay / path.parent),
                                "../../../base")
        assert mine == theirs, path


def test_stay_keeps_a_role_until_it_is_stopped():
    child = subprocess.Popen([sys.executable, "-c", "from kalab import handoff; "
                              "handoff.stay_until_stopped(True)"], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(1.0)
        assert child.poll() is None  # staying
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
