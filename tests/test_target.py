"""`kalab run --target URL SCENARIO` against a server the test starts in a namespace of its own.

gunicorn gthread (`--keep-alive 2`) runs in a server namespace joined by a veth to a
client namespace (`served`), where `kalab run --target` runs the scenario's sessions
against it. tshark is the referee of the report's connections, requests and closers
on the run's own pcap, and the report must have the shape a normal `kalab run` of
the same scenario with that engine has: the same connections, each request at the
same depth on the same one, the same side sending each first FIN. Bad input is
refused before anything starts. Nothing but the test's own namespaces is addressed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import KALAB, ROOT, requires_lab, run_kalab
from served import PORT, served
from tshark_referee import available, compare

from kalab.target import Pace

SCENARIO = """\
name: gthread-2-target
sessions:
  - steps:
      - get: /keep-alive
      - sleep: 1
      - get: /keep-alive
      - sleep: 3          # idle past the server's 2 s
      - get: /keep-alive
      - sleep: 1
      - close
engines:
  - name: gthread-2
    engine: gunicorn
    worker: gthread
    keep_alive: 2
    expect:
      - same_connection: [1, 2]
      - close: {request: 2, by: server, idle: 2.0, tolerance: 0.5}
      - new_connection: [3]
      - close: {request: 3, by: client, idle: 1.0, tolerance: 0.5}
      - connections: 2
      - status: 200
"""
ENGINE = "{engine: gunicorn, worker: gthread, keep_alive: 2}"


def shape(run: dict) -> tuple[list, list]:
    """The run's connections that carried the scenario's requests, in order: (their
    requests, who sent the first FIN, how they ended), and each request's place: (id,
    which of those connections, depth). Readiness probes (a lab run has them) left out."""
    used = [c for c in run["connections"] if not c["probe"]]
    order = {c["id"]: number for number, c in enumerate(used, 1)}
    connections = [(c["requests"], c["first_fin_by"], c["closed_by"]) for c in used]
    requests = [(r["id"], order[r["connection"]], r["depth"]) for r in run["requests"]]
    return connections, requests


@requires_lab
@pytest.mark.slow
@pytest.mark.skipif(not available(), reason="needs tshark")
def test_a_target_run_shows_what_the_lab_s_own_run_of_that_engine_shows(tmp_path):
    scenario = tmp_path / "gthread-2.yaml"
    scenario.write_text(SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    listening: set[str] = set()
    with served("target", ENGINE, 31, prefix="ktgt", path="/") as (client_ns, url):
        kalab = subprocess.Popen(["ip", "netns", "exec", client_ns, *KALAB, "run", "--target",
                                  url, str(scenario), "--results", str(tmp_path / "target")],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
        try:
            # Nothing listens on the client's side (where the lab's roles run) meanwhile.
            deadline = time.monotonic() + 300
            while kalab.poll() is None and time.monotonic() < deadline:
                listening |= set(subprocess.run(
                    ["ip", "netns", "exec", client_ns, "ss", "-Hltnu"], capture_output=True,
                    text=True, check=True).stdout.splitlines())
                time.sleep(0.2)
            out, err = kalab.communicate(timeout=10)
        finally:
            if kalab.poll() is None:  # SIGTERM: the run stops its roles itself
                kalab.terminate()
                try:
                    kalab.wait(30)
                except subprocess.TimeoutExpired:
                    kalab.kill()
                    kalab.wait()
    assert kalab.returncode == 0, out[-3000:] + err
    assert not listening
    report = json.loads((tmp_path / "target" / "report.json").read_text())
    assert report["runtime"] == "target"
    target = report["target"]
    assert (target["url"], target["address"], target["port"]) == \
        (url, url.split("/")[2].split(":")[0], PORT)
    assert target["engines_ignored"] == ["gthread-2"] and \
        target["expectations_of"] == "gthread-2"
    (run,) = report["runs"]
    assert (run["engine"], run["kind"]) == ("target", "target")
    assert "not started: gthread-2" in run["description"]
    assert run["capture"]["interface"] == target["interface"]
    # The summary says whose server it was, not a version it cannot know.
    assert f"target {run['listen']}, a server the lab did not start" in out
    assert "server ?" not in out
    assert run["capture"]["filter"] == f"tcp port {PORT} and host {target['address']}"
    # The scenario's expectations were checked against the target, and held.
    assert len(run["expectations"]) == 6 and all(e["passed"] for e in run["expectations"])
    # tshark agrees with the report on the target run's own pcap.
    assert compare(run, tmp_path / "target" / "target" / "capture.pcap", PORT) == []
    # The lab running that engine itself shows the same shape.
    own = run_kalab("run", str(scenario), "--results", str(tmp_path / "lab"))
    assert own.returncode == 0, own.stdout[-3000:] + own.stderr
    (lab_run,) = json.loads((tmp_path / "lab" / "report.json").read_text())["runs"]
    assert shape(run) == shape(lab_run) == (
        [(["1", "2"], "server", "server"), (["3"], "client", "client")],
        [("1", 1, 1), ("2", 1, 2), ("3", 2, 1)])
    closed = [c["idle_before_close"] for c in run["connections"]]
    lab_closed = [c["idle_before_close"] for c in lab_run["connections"] if not c["probe"]]
    assert closed == pytest.approx(lab_closed, abs=0.1)


@requires_lab
@pytest.mark.slow
@pytest.mark.skipif(not available(), reason="needs tshark")
def test_an_https_target_is_read_off_the_wire_with_the_clients_key_log(tmp_path):
    """gunicorn over HTTPS with a CA of the test's own, given as --target-ca: the clients
    verify the server against it, write their TLS secrets, and the report reads every
    request (none inferred) as tshark does with that key log."""
    scenario = tmp_path / "gthread-2.yaml"
    scenario.write_text(SCENARIO)
    ca = tmp_path / "their-ca.pem"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    with served("target", ENGINE, 32, prefix="ktls", path="/", tls_ca=ca) as (client_ns, url):
        assert url.startswith("https://")
        done = subprocess.run(["ip", "netns", "exec", client_ns, *KALAB, "run", "--target",
                               url, "--target-ca", str(ca), str(scenario), "--results",
                               str(tmp_path / "target")], cwd=ROOT, capture_output=True,
                              text=True, env=env, timeout=300)
        # Without the CA the server's certificate is refused: the clients never skip it.
        (tmp_path / "nothing.yaml").write_text(
            "sessions: [{steps: [get: /keep-alive]}]\n"
            "engines: [{engine: gunicorn, worker: gthread, expect: [{status: 200}]}]\n")
        unverified = subprocess.run(["ip", "netns", "exec", client_ns, *KALAB, "run",
                                     "--target", url, str(tmp_path / "nothing.yaml"),
                                     "--results", str(tmp_path / "unverified")], cwd=ROOT,
                                    capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    results = tmp_path / "target"
    report = json.loads((results / "report.json").read_text())
    assert report["target"]["ca"] == str(ca)
    assert (results / "target-ca.pem").read_bytes() == ca.read_bytes()
    (run,) = report["runs"]
    assert all(e["passed"] for e in run["expectations"]) and len(run["expectations"]) == 6
    assert [r["id"] for r in run["requests"]] == ["1", "2", "3"]
    assert not any(r["inferred"] for r in run["requests"])
    assert all(c["tls"] for c in run["connections"])
    keylog = results / "target" / "tls-keys.log"
    assert keylog.stat().st_size > 0
    assert compare(run, results / "target" / "capture.pcap", PORT, keylog) == []
    assert shape(run) == ([(["1", "2"], "server", "server"), (["3"], "client", "client")],
                          [("1", 1, 1), ("2", 1, 2), ("3", 2, 1)])
    assert unverified.returncode == 1, unverified.stdout[-3000:] + unverified.stderr
    (failed,) = json.loads((tmp_path / "unverified" / "report.json").read_text())["runs"]
    assert failed["client_errors"] and all(
        "CERTIFICATE_VERIFY_FAILED" in json.dumps(e) for e in failed["client_errors"]), \
        failed["client_errors"]


def refused(tmp_path: Path, *args: str, scenario: str = SCENARIO) -> str:
    """`kalab run` with ``args``: it must exit 2 with one line, having made nothing."""
    path = tmp_path / "scenario.yaml"
    path.write_text(scenario)
    started = time.monotonic()
    done = run_kalab("run", *args, str(path), "--results", str(tmp_path / "r"), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("kalab: ")
    assert not (tmp_path / "r").exists(), "a refused run made its results folder"
    assert time.monotonic() - started < 30
    return done.stderr


@pytest.mark.parametrize("url,words", [
    ("ftp://10.215.31.1/", "only an explicit http:// or https://"),
    ("file:///etc/passwd", "only an explicit http:// or https://"),
    ("10.215.31.1:5000", "only an explicit http:// or https://"),
    ("//10.215.31.1:5000/", "only an explicit http:// or https://"),
    ("http://10.215.31.1:5000/keep-alive", "give the server's root"),
    ("http://user:pw@10.215.31.1/", "no credentials"),
    ("http://10.215.31.1:99999/", "the port is not a number"),
    ("http://10.215.31.1:0/", "the port is not a number"),  # not quietly port 80
    ("http://10.215.31.1:http/", "the port is not a number"),
])
def test_only_an_http_url_of_a_server_s_root_is_a_target(tmp_path, url, words):
    assert words in refused(tmp_path, "--target", url)


@pytest.mark.parametrize("url,ca,words", [
    ("http://10.215.31.1:5000/", "ca.pem", "--target-ca: only with an https:// URL"),
    ("https://10.215.31.1:5000/", "absent.pem", "absent.pem: no such file"),
    ("https://10.215.31.1:5000/", "/dev/null", "/dev/null: not a regular file"),
    ("https://10.215.31.1:5000/", "junk.pem", "junk.pem: not a file of PEM certificates"),
    ("https://10.215.31.1:5000/", "binary.pem", "binary.pem: not a file of PEM certificates"),
    ("https://10.215.31.1:5000/", "huge.pem", "huge.pem: more than 1048576 bytes"),
])
def test_a_target_ca_is_a_file_of_pem_certificates_for_an_https_target(tmp_path, url, ca,
                                                                       words):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "binary.pem").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "huge.pem").write_bytes(b"A" * (1 << 20 | 1))
    path = ca if ca.startswith("/") else str(tmp_path / ca)
    assert words in refused(tmp_path, "--target", url, "--target-ca", path)


def test_a_scenario_that_could_send_more_than_the_bound_is_refused(tmp_path):
    many = SCENARIO.replace("      - sleep: 1\n      - close\n",
                            "".join("      - get: /keep-alive\n" for _ in range(198)))
    text = refused(tmp_path, "--target", "http://10.215.31.1:5000/", scenario=many)
    assert "201 requests" in text and "--max-requests 200" in text
    # Each try a client's retries could make counts too.
    retried = SCENARIO.replace("  - steps:", "  - retries: 1\n    steps:")
    text = refused(tmp_path, "--target", "http://10.215.31.1:5000/", "--max-requests", "5",
                   scenario=retried)
    assert "up to 6 requests (retries counted)" in text


def test_a_scenario_that_plans_more_time_than_the_bound_is_refused(tmp_path):
    text = refused(tmp_path, "--target", "http://10.215.31.1:5000/", "--max-seconds", "4")
    assert "planned time is 5 s, more than --max-seconds 4" in text


@pytest.mark.parametrize("args,words", [
    (("--max-requests", "0"), "--max-requests: from 1 to 1000"),
    (("--max-seconds", "1e9"), "--max-seconds: from 1 to 3600"),
    (("--rate", "nan"), "--rate: from 0.1 to 50"),
    (("--burst", "1000"), "--burst: from 1 to 100"),
    (("--runtime", "local"), "--runtime: a run against --target has its own"),
    (("--expectations-of", "nginx"), "no engine named 'nginx'"),
])
def test_a_target_run_s_bounds_are_bounded(tmp_path, args, words):
    assert words in refused(tmp_path, "--target", "http://10.215.31.1:5000/", *args)


@pytest.mark.parametrize("option", ["--max-requests", "--rate", "--expectations-of",
                                    "--target-ca"])
def test_the_target_options_go_with_a_target_only(tmp_path, option):
    assert f"{option}: only with --target" in refused(tmp_path, option, "5")


def test_a_target_run_of_a_scenario_with_a_link_is_refused(tmp_path):
    linked = SCENARIO + "link:\n  server_to_client: {delay_ms: 50}\n"
    assert "link: impairments need the lab's own network" in \
        refused(tmp_path, "--target", "http://10.215.31.1:5000/", scenario=linked)


def test_whose_expectations_apply_is_never_guessed(tmp_path):
    two = SCENARIO + SCENARIO.split("engines:\n", 1)[1].replace("name: gthread-2",
                                                                "name: other")
    text = refused(tmp_path, "--target", "http://10.215.31.1:5000/", scenario=two)
    assert "engines gthread-2, other each expect their own" in text


def test_the_pace_holds_requests_past_the_burst_to_the_rate():
    pace = Pace(rate=20.0, burst=2)
    started = time.monotonic()
    waits = [pace.take() for _ in range(4)]
    # The burst leaves at once; the next two wait a twentieth of a second each (at least:
    # a loaded machine only makes them later).
    assert waits[:2] == [0.0, 0.0] and all(w > 0 for w in waits[2:])
    assert time.monotonic() - started >= 2 / 20.0 - 0.005
    # A batch larger than the burst waits for a full bucket, and the next one pays for it.
    pace = Pace(rate=20.0, burst=2)
    assert pace.take(5) == 0.0
    started = time.monotonic()
    pace.take()
    assert time.monotonic() - started >= 4 / 20.0 - 0.005


def test_the_readme_s_target_command_is_one_kalab_takes():
    """The README's example is checked as far as it goes without a server: its options
    parse, its scenario loads within the bounds, its engine has expectations."""
    from kalab import cli, target
    from kalab.scenario import load

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith("./lab run --target")]
    args = cli._parser().parse_args(line.split()[1:])
    assert target.for_run(args.target).port == 8000
    scenario = load(ROOT / args.scenario)
    assert target.whose_expectations(scenario, args.expectations_of) == args.expectations_of
    assert scenario.engine(args.expectations_of).expect
    defaults = {option: default for option, _, default, _ in cli.TARGET_BOUNDS}
    target.check_bounded(scenario, defaults["--max-requests"], defaults["--max-seconds"])
    # The bounds the README gives are the defaults.
    words = " ".join(text.split())
    assert f"send more than {defaults['--max-requests']} requests or plans more than " \
        f"{defaults['--max-seconds']:g} s" in words
    assert f"at most {defaults['--rate']:g} a second after a burst of " \
        f"{defaults['--burst']}" in words


def test_a_target_is_captured_on_every_address_a_client_may_try(monkeypatch):
    # What `locate` makes of a name's addresses (the capture itself: test_capture.py).
    import socket

    from kalab import impairment, target

    answers = {"dual.test": ["::1", "127.0.0.1", "::1"],  # each address once
               "split.test": ["10.9.0.1", "fd00:9::1"],
               "partly.test": ["fd00:8::1", "10.8.0.1"],
               "nowhere.test": ["fd00:7::1"]}
    routes = {"::1": "lo", "127.0.0.1": "lo", "10.9.0.1": "eth0", "fd00:9::1": "wg0",
              "10.8.0.1": "eth0"}

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in answers[host]]

    def route(address):
        if address not in routes:
            raise impairment.ImpairmentError(f"no route to {address}: unreachable")
        return routes[address]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(impairment, "route_interface", route)

    def locate(host):
        return target.locate(target.parse(f"http://{host}:8080/"))

    assert locate("dual.test") == (["::1", "127.0.0.1"], "lo")
    # No route, no packet: an address this host cannot send to is not waited for.
    assert locate("partly.test") == (["10.8.0.1"], "eth0")
    with pytest.raises(ValueError, match="no route to fd00:7::1"):
        locate("nowhere.test")
    # One capture cannot see two interfaces: refused, and the way out said.
    with pytest.raises(ValueError) as refused:
        locate("split.test")
    assert str(refused.value) == (
        "split.test: its addresses leave this host by different interfaces (10.9.0.1 by "
        "eth0, fd00:9::1 by wg0) and one capture cannot see them all: give one of them in "
        "the URL")


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe captures as root only")
def test_a_probe_of_a_name_that_does_not_resolve_starts_nothing(tmp_path, monkeypatch,
                                                                 capsys):
    # As `run --target`: where to capture is found first, and a name that does not
    # resolve is bad input (exit 2), no results folder made.
    import socket

    from kalab import cli

    def unknown(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    assert cli.main(["probe", "http://nowhere.test:8080/", "--results",
                     str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == \
        "kalab: nowhere.test: cannot resolve: Name or service not known\n"
    assert not (tmp_path / "r").exists()
