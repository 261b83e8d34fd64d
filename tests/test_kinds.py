"""The engine and client kinds: one module each, found by the registry, named nowhere else.

Each client kind also runs here against a small HTTP/1.1 server on loopback
that notes when its client closed each connection, so what the client
believed (a new or a reused connection, its port, its own idle timer) is
checked against what the server saw. The real runs in namespaces, on the
wire, are tests/test_scenarios.py's.
"""

from __future__ import annotations

import ast
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_kalab
from test_client_sessions import server

from client.sessions import run_sessions
from kalab import scenario_schema
from kalab.kinds import ClientKind, EngineKind, client_kinds, engine_kinds
from kalab.scenario import ScenarioError, parse

ENGINES = ("werkzeug", "gunicorn", "waitress", "uvicorn", "hypercorn", "apache", "uwsgi",
           "nginx", "haproxy")
CLIENTS = ("requests", "urllib3", "httpx", "aiohttp", "curl")
PROXIES = ("nginx", "haproxy")


def test_the_registry_finds_every_kind_in_its_own_module():
    engines, clients = engine_kinds(), client_kinds()
    assert tuple(engines) == ENGINES and tuple(clients) == CLIENTS
    for name, kind in engines.items():
        assert kind.__module__ == f"server.engines.{name}" and issubclass(kind, EngineKind)
        assert kind.summary and kind.advertises and kind.proxy == (name in PROXIES)
        assert all(spec.doc for spec in kind.options.values()), name
    for name, kind in clients.items():
        assert kind.__module__ == f"client.kinds.{name}" and issubclass(kind, ClientKind)
        assert kind.summary and kind.advertises
        assert all(spec.doc for spec in kind.options.values()), name
    assert next(iter(clients)) == "requests"  # the default client comes first


def _kind_literals(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """String literals in ``path`` equal to a kind's name, docstrings and data keys aside.

    A data key (``record["requests"]``, ``.get("requests")``, ``{"requests": ...}``) and
    a list of field names or columns (a tuple of strings not all kinds) use the word for
    what it means in the records, not for a kind.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("get", "pop", "setdefault") and node.args:
            skip.add(id(node.args[0]))
        elif isinstance(node, ast.Dict):
            skip.update(id(key) for key in node.keys if key is not None)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(words) == len(node.elts) > 1 and not set(words) <= names:
                skip.update(id(e) for e in node.elts)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in names and id(node) not in skip]


# Where the word is not a kind: the report's own for HTTP requests (a query's subject, a
# sweep's field of counted requests), and the key of client records written before the
# client kinds (urllib3's log lines).
WORDS_NOT_KINDS = {("kalab/course/query.py", "requests"), ("kalab/sweep.py", "requests"),
                   ("kalab/evidence.py", "urllib3")}


def test_no_module_outside_a_kind_s_own_names_a_kind():
    names = set(ENGINES) | set(CLIENTS)
    own = {ROOT / "server" / "engines" / f"{name}.py" for name in ENGINES} | \
        {ROOT / "client" / "kinds" / f"{name}.py" for name in CLIENTS}
    found = []
    for folder in ("kalab", "server", "client", "observer"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                      for line, value in _kind_literals(path, names)
                      if (path not in own or path.stem != value)
                      and (str(path.relative_to(ROOT)), value) not in WORDS_NOT_KINDS]
    assert found == []


def test_the_scan_finds_a_kind_named_where_it_should_not_be(tmp_path):
    # the check above must be able to fail
    (tmp_path / "x.py").write_text('"""nginx is fine here."""\n'
                                   'if kind == "nginx":\n    x = record["requests"]\n'
                                   'COLUMNS = ("requests", "status")\nboth = ("uwsgi", "curl")\n')
    assert _kind_literals(tmp_path / "x.py", {"nginx", "requests", "uwsgi", "curl"}) == \
        [(2, "nginx"), (5, "uwsgi"), (5, "curl")]


def _scenario(engine: str = "{engine: werkzeug}", session: str = "") -> str:
    return f"sessions:\n  - steps: [get: /]\n{session}engines: [{engine}]\n"


@pytest.mark.parametrize("kind", ENGINES)
def test_an_engine_setting_its_kind_does_not_take_is_refused_naming_those_it_does(kind):
    foreign = "threaded" if kind != "werkzeug" else "keep_alive"  # another kind's setting
    with pytest.raises(ScenarioError) as caught:
        parse(_scenario(f"{{engine: {kind}, {foreign}: 1}}"), "lab.yaml")
    takes = ", ".join(sorted(engine_kinds()[kind].options)) or "nothing"
    assert caught.value.where == f"engines[0].{foreign}"
    assert caught.value.message == f"does not apply to {kind} ({kind} takes: {takes})"


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_client_setting_its_kind_does_not_take_is_refused_naming_those_it_does(kind):
    foreign = "session" if kind != "requests" else "keepalive_expiry"  # another kind's
    with pytest.raises(ScenarioError) as caught:
        parse(_scenario(session=f"    client: {kind}\n    {foreign}: 1\n"), "lab.yaml")
    takes = ", ".join(sorted(client_kinds()[kind].options)) or "nothing"
    assert caught.value.message == f"does not apply to {kind} ({kind} takes: {takes})"
    assert caught.value.where == f"sessions[0].{foreign}"


def test_kalab_check_refuses_a_setting_with_exit_2_naming_the_valid_ones(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(_scenario(session="    client: curl\n    retries: 2\n"))
    done = run_kalab("check", str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"kalab: {path}:4: sessions[0].retries: does not apply to "
                                   "curl (curl takes: http_version)")


def test_a_curl_session_refuses_a_close_step_and_a_proxy_its_engine_s_rules():
    with pytest.raises(ScenarioError, match="nothing to close with client: curl"):
        parse("sessions: [{client: curl, steps: [get: /, close]}]\n"
              "engines: [{engine: werkzeug}]\n")
    with pytest.raises(ScenarioError, match="sync worker has no keep-alive") as caught:
        parse(_scenario("{engine: haproxy, behind: {engine: gunicorn, worker: sync, "
                        "keep_alive: 3}}"))
    assert caught.value.where == "engines[0].behind.keep_alive"
    with pytest.raises(ScenarioError, match="give the settings of the engine behind"):
        parse(_scenario("{engine: nginx, keep_alive: 3, behind: {engine: uvicorn}}"))
    with pytest.raises(ScenarioError, match="unknown value 'nginx'"):
        parse(_scenario("{engine: haproxy, behind: {engine: nginx}}"))


def test_a_proxy_runs_the_engine_behind_it_with_that_engine_s_settings():
    nginx, haproxy = parse(_scenario(
        "{engine: nginx, keep_alive: 3}, {engine: haproxy, timeout_http_keep_alive: 4, "
        "behind: {engine: uvicorn, timeout_keep_alive: 2}}")).engines
    behind = nginx.kind_class.behind(nginx)
    assert (behind.kind, behind.keep_alive, behind.worker) == ("gunicorn", 3, "gthread")
    behind = haproxy.kind_class.behind(haproxy)
    assert (behind.kind, behind.timeout_keep_alive) == ("uvicorn", 2)
    assert haproxy.describe().endswith("in front of uvicorn, timeout-keep-alive 2s (WSGI via "
                                       "asgiref)")


def test_the_scenario_schema_lists_each_kind_s_settings():
    schema = scenario_schema.json_schema()
    for name, record, kinds in (("Engine", "engine", engine_kinds()),
                                ("Session", "client", client_kinds())):
        rules = {rule["if"]["properties"][record]["const"]: rule["then"]["properties"]
                 for rule in schema["$defs"][name]["allOf"] if "if" in rule}
        assert list(rules) == list(kinds)
        every = set(schema["$defs"][name]["properties"])
        for kind, settings in rules.items():
            refused = {key for key, value in settings.items() if value is False}
            # each kind's settings are allowed, every other kind's refused
            assert refused == {key for other in kinds.values() for key in other.options} \
                - set(kinds[kind].options), kind
            assert set(kinds[kind].options) <= every
    clients = schema["$defs"]["Session"]["properties"]["client"]
    assert clients["anyOf"][0]["enum"] == list(CLIENTS)


# ------------------------------------------------------------- the README's examples


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_s_engine_example_is_a_real_engine_module():
    block = _readme_block("Adding an engine")
    path = ROOT / "server" / "engines" / "uvicorn.py"
    assert block == path.read_text(encoding="utf-8")


def test_the_readme_s_client_example_is_a_client_kind_that_runs():
    namespace: dict = {}
    exec(compile(_readme_block("Adding a client"), "README.md", "exec"), namespace)  # noqa: S102
    kind = namespace["KIND"]
    assert issubclass(kind, ClientKind) and kind.name not in client_kinds()
    session = parse(_scenario(session="    name: s\n")).sessions[0]
    request = session.requests[0]
    with server() as (base, closed):
        driver = kind.driver(session, base, lambda mono: mono)
        first = driver.send(request, time.time())
        second = driver.send(request, time.time())
        driver.close(False)
        time.sleep(0.2)
    assert (first.status, second.status) == (200, 200)
    assert (first.new_connection, second.new_connection) == (True, False)
    assert first.local_port == second.local_port and [p for p, _ in closed] == \
        [first.local_port]
    assert len(driver.closes) == 1


# ------------------------------------------------------ each client, against a server


def run(client: str, settings: str, steps: str) -> tuple[list[dict], list[tuple[int, float]],
                                                       dict]:
    scenario = parse(f"sessions:\n  - name: s\n    client: {client}\n{settings}"
                     f"    steps: [{steps}]\nengines: [{{engine: werkzeug}}]\n")
    with server() as (base, closed):
        records = run_sessions(scenario, base)
        time.sleep(0.3)  # the server notes the last close
    return records["requests"], closed, records


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_reuses_its_connection_and_says_so(client):
    made, closed, records = run(client, "", "get: /, get: /, get: /")
    assert [r["status"] for r in made] == [200, 200, 200]
    assert [r["client"] for r in made] == [client] * 3
    assert [r["new_connection"] for r in made] == [True, False, False]
    # a client that cannot tell whether it replaced a dropped connection never says so
    kind = client_kinds()[client]
    assert all((r["replaced_dropped"] is None) != kind.tells_replaced_dropped for r in made)
    ports = {r["local_port"] for r in made}
    assert len(ports) == 1 and None not in ports
    assert [port for port, _ in closed] == list(ports)  # one connection, closed at the end
    assert all(r["events"] for r in made)
    assert records["versions"] and all(v for v in records["versions"].values())
    # each request's time window holds its own request alone
    for before, after in zip(made, made[1:], strict=False):
        assert before["sent_at"] <= before["finished_at"] <= after["sent_at"]


def test_aiohttp_closes_an_idle_connection_on_its_own_timer_while_the_session_sleeps():
    made, closed, _ = run("aiohttp", "    keepalive_timeout: 0.5\n", "get: /, sleep: 1.5, get: /")
    first, second = made
    assert second["new_connection"] is True and first["local_port"] != second["local_port"]
    (port, at), _ = closed
    assert port == first["local_port"]
    # the client's own FIN about 0.5 s idle (its cleanup runs on the loop's clock),
    # long before the next request
    assert 0.4 <= at - first["finished_at"] <= 1.2 and at < second["sent_at"] - 0.2
    assert second["replaced_dropped"] is None  # aiohttp's trace cannot tell


def test_httpx_expires_an_idle_connection_only_when_it_next_uses_the_pool():
    made, closed, _ = run("httpx", "    keepalive_expiry: 0.3\n", "get: /, sleep: 1, get: /")
    first, second = made
    assert second["new_connection"] is True and second["replaced_dropped"] is False
    assert any("past keepalive_expiry" in event for event in second["events"])
    # Both closed; the server's threads may note them in either order on a busy machine.
    closed_at = dict(closed)
    assert sorted(closed_at) == sorted([first["local_port"], second["local_port"]])
    # sync httpx has no timer: the expired connection is closed by the next request
    assert closed_at[first["local_port"]] >= second["sent_at"] - 0.01


def test_curl_sends_requests_without_a_pause_in_one_invocation_and_exits_after():
    made, closed, records = run("curl", "", "get: /, get: /, sleep: 0.5, get: /")
    assert [r["new_connection"] for r in made] == [True, False, True]
    assert made[0]["local_port"] == made[1]["local_port"] != made[2]["local_port"]
    # the first invocation closed its connection as it exited, before the sleep ended
    assert closed[0][0] == made[0]["local_port"] and closed[0][1] < made[2]["sent_at"]
    assert len(records["closes"]) == 2  # one per invocation
    assert any("Re-using existing connection" in e for e in made[1]["events"])


def test_curl_s_times_are_the_wall_clock_s(monkeypatch):
    """curl 7.x prints --trace-time off the wall clock by a fraction of a second; the
    transfers' times must still fall within the invocation, in order."""
    made, _, _ = run("curl", "", "get: /, get: /, get: /, get: /")
    for before, after in zip(made, made[1:], strict=False):
        assert before["sent_at"] < before["finished_at"] <= after["sent_at"] + 0.0005
        assert after["sent_at"] - before["finished_at"] < 0.05


def test_a_request_that_fails_is_recorded_with_the_client_s_own_error():
    for client in CLIENTS:
        scenario = parse(f"sessions:\n  - client: {client}\n    steps: [get: /]\n"
                         "engines: [{engine: werkzeug}]\n")
        (record,) = run_sessions(scenario, "http://127.0.0.1:9")["requests"]  # nothing there
        assert record["status"] is None and record["error"], client


def test_threads_of_several_sessions_keep_their_own_events():
    scenario = parse("sessions:\n" + "".join(
        f"  - {{name: {c}, client: {c}, steps: [get: /, get: /]}}\n" for c in CLIENTS)
        + "engines: [{engine: werkzeug}]\n")
    with server() as (base, _):
        made = run_sessions(scenario, base)["requests"]
    assert threading.active_count() < 20
    for record in made:
        assert record["client"] == record["session"]
        assert record["new_connection"] == record["ref"].endswith(".1"), record
