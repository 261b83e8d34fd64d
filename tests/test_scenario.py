"""The scenario model: what loads, and bad input refused with file, line and field."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from conftest import ROOT, lab_namespaces, run_kalab

from kalab import scenario_schema
from kalab.apps import PROJECT_APPS, AppFile, load_app
from kalab.scenario import (
    DEFAULT_APP,
    ENGINE_KIND_OPTIONS,
    ENGINE_OPTIONS,
    NAME_PATTERN,
    Engine,
    ScenarioError,
    TcpKeepalive,
    check_name,
    document,
    load,
    parse,
)

GOOD = """\
port: 5000
sessions:
  - steps:
      - get: /keep-alive
      - sleep: 3
      - request: {method: post, path: /keep-alive, headers: {X-Test: "1"}, body: hi}
      - at: 10
      - close
engines:
  - engine: werkzeug
    threaded: false
  - engine: gunicorn
    worker: gthread
    keep_alive: 5
    expect:
      - same_connection: [1, 2]
      - close: {request: 2, by: server, idle: 5, tolerance: 0.25}
"""


def test_a_good_scenario_loads_into_the_model():
    scenario = parse(GOOD, "good.yaml")
    assert [e.name for e in scenario.engines] == ["werkzeug", "gunicorn-gthread"]
    werkzeug, gthread = scenario.engines
    assert werkzeug.threaded is False
    assert gthread.keep_alive == 5 and gthread.worker == "gthread"
    steps = scenario.sessions[0].steps
    assert [s.kind for s in steps] == ["request", "sleep", "request", "at", "close"]
    post = steps[2].request
    assert (post.method, post.headers, post.body, post.ref) == ("POST", {"X-Test": "1"}, "hi", "2")
    close = gthread.expect[1]
    assert (close.kind, close.requests, close.by, close.idle, close.tolerance) == \
        ("close", ("2",), "server", 5, 0.25)
    assert close.line == 17


def test_the_bundled_scenarios_load():
    for path in [ROOT / "lab.yaml", *sorted((ROOT / "scenarios").glob("*.yaml"))]:
        if path.name.startswith("broken"):
            continue
        assert load(path).engines


def test_a_status_can_be_expected_of_one_request():
    scenario = parse("""\
sessions: [{steps: [get: /, get: /]}]
engines:
  - engine: nginx
    expect: [status: {request: 2, is: 502}, status: 200]
""")
    one, every = scenario.engines[0].expect
    assert (one.requests, one.status, one.claim) == (("2",), 502, "request 2 gets status 502")
    assert (every.requests, every.status) == ((), 200)


def test_several_sessions_name_requests_by_session():
    scenario = parse("""\
sessions:
  - {name: a, steps: [get: /]}
  - {name: b, steps: [get: /, get: /]}
engines:
  - engine: werkzeug
    expect: [same_connection: [b.1, b.2]]
""")
    assert [r.ref for r in scenario.requests] == ["a.1", "b.1", "b.2"]


def test_a_session_without_a_session_and_tcp_keepalive_load_into_the_model():
    scenario = parse("""\
sessions:
  - name: plain
    session: false
    tcp_keepalive: {idle: 1, interval: 2, count: 3}
    steps: [get: /, sleep: 1, get: /]
  - name: pooled
    tcp_keepalive: {}
    steps: [get: /]
engines: [{engine: werkzeug}]
""")
    plain, pooled = scenario.sessions
    assert plain.use_session is False and pooled.use_session is True
    assert plain.tcp_keepalive == TcpKeepalive(idle=1, interval=2, count=3)
    # {} turns the probes on with the system's timers; absent, there are none
    assert pooled.tcp_keepalive == TcpKeepalive(None, None, None)
    assert parse(GOOD).sessions[0].tcp_keepalive is None


BAD = [
    ("wrong type", "port: abc\nengines: [{engine: werkzeug}]\nsessions: [{steps: [get: /]}]\n",
     1, "port", "expected a whole number"),
    ("unknown engine", "sessions: [{steps: [get: /]}]\nengines:\n  - engine: tomcat\n",
     3, "engines[0].engine", "unknown value 'tomcat'"),
    ("negative sleep", "engines: [{engine: werkzeug}]\nsessions:\n  - steps:\n"
     "      - get: /\n      - sleep: -2\n", 5, "sessions[0].steps[1].sleep", "must be >= 0"),
    ("bad yaml", "engines: [{engine: werkzeug}\nsessions: []\n", 2, "yaml", ""),
    ("unknown field", "engines: [{engine: werkzeug, keepalive_secs: 5}]\n"
     "sessions: [{steps: [get: /]}]\n", 1, "engines[0].keepalive_secs", "unknown field"),
    ("unknown request", "sessions: [{steps: [get: /]}]\nengines:\n  - engine: werkzeug\n"
     "    expect:\n      - same_connection: [1, 7]\n", 5,
     "engines[0].expect[0].same_connection", "no request '7'"),
    ("option of another engine", "sessions: [{steps: [get: /]}]\n"
     "engines:\n  - engine: werkzeug\n    keep_alive: 5\n", 4, "engines[0].keep_alive",
     "does not apply to werkzeug"),
    ("upstream without nginx", "sessions: [{steps: [get: /]}]\nengines: [{engine: gunicorn}]\n"
     "link:\n  upstream_to_proxy: {delay_ms: 100}\n", 4, "link.upstream_to_proxy",
     "only proxy engines (nginx"),
    ("only with rate", "sessions: [{steps: [get: /]}]\nengines: [{engine: gunicorn}]\n"
     "link:\n  server_to_client:\n    rate: 1mbit\n    only: fin\n", 6,
     "link.server_to_client.only", "not with rate"),
    ("close without a session", "engines: [{engine: werkzeug}]\nsessions:\n"
     "  - session: false\n    steps:\n      - get: /\n      - close\n", 6,
     "sessions[0].steps[1]", "nothing to close with session: false"),
    ("stale check without a session", "engines: [{engine: werkzeug}]\nsessions:\n"
     "  - session: false\n    stale_check: false\n    steps: [get: /]\n", 4,
     "sessions[0].stale_check", "no connection is ever reused"),
    ("keep-alive idle of 0", "engines: [{engine: werkzeug}]\nsessions:\n"
     "  - tcp_keepalive: {idle: 0}\n    steps: [get: /]\n", 3,
     "sessions[0].tcp_keepalive.idle", "must be >= 1, got 0"),
    ("keep-alive interval in fractions", "engines: [{engine: werkzeug}]\nsessions:\n"
     "  - tcp_keepalive: {interval: 0.5}\n    steps: [get: /]\n", 3,
     "sessions[0].tcp_keepalive.interval", "expected a whole number, got 0.5"),
    ("keep-alive count past 20", "engines: [{engine: werkzeug}]\nsessions:\n"
     "  - tcp_keepalive: {count: 21}\n    steps: [get: /]\n", 3,
     "sessions[0].tcp_keepalive.count", "must be <= 20, got 21"),
    ("keep-alive idle past an hour", "engines: [{engine: werkzeug}]\nsessions:\n"
     "  - tcp_keepalive: {idle: 7200}\n    steps: [get: /]\n", 3,
     "sessions[0].tcp_keepalive.idle", "must be <= 3600, got 7200"),
    ("status of no request", "sessions: [{steps: [get: /]}]\nengines:\n  - engine: werkzeug\n"
     "    expect:\n      - status: {request: 3, is: 502}\n", 5,
     "engines[0].expect[0].status.request", "no request '3'"),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_input_names_file_line_and_field(text, line, field, words):
    with pytest.raises(ScenarioError) as caught:
        parse(text, "lab.yaml")
    error = caught.value
    assert (error.file, error.line, error.where) == ("lab.yaml", line, field)
    assert words in error.message
    assert str(error).startswith(f"lab.yaml:{line}: {field}: ")
    assert "\n" not in str(error)


@pytest.mark.parametrize(("text", "line", "field", "words"), [b[1:] for b in BAD[:4]],
                         ids=[b[0] for b in BAD[:4]])
def test_kalab_run_refuses_bad_input_with_exit_2_and_starts_nothing(tmp_path, text, line,
                                                                    field, words):
    scenario = tmp_path / "lab.yaml"
    scenario.write_text(text)
    namespaces_before = set(lab_namespaces())
    done = run_kalab("run", str(scenario), "--results", str(tmp_path / "results"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"kalab: {scenario}:{line}: {field}: " + \
        done.stderr.strip().split(f"{field}: ", 1)[1]
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
    assert set(lab_namespaces()) == namespaces_before


def test_a_missing_scenario_file_is_bad_input(tmp_path):
    done = run_kalab("run", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "nope.yaml" in done.stderr and "cannot read" in done.stderr


@pytest.mark.parametrize(("file", "name"), [
    ("my lab (copy).yaml", "my-lab--copy-"), (".hidden.yaml", "-hidden"),
    ("naïve.yaml", "na-ve"), (f"{'x' * 80}.yaml", "x" * 64)])
def test_a_name_taken_from_the_file_is_made_a_name_never_refused(tmp_path, file, name):
    (tmp_path / file).write_text("sessions: [{steps: [get: /]}]\nengines: [{engine: werkzeug}]\n")
    scenario = load(tmp_path / file)
    assert scenario.name == name and check_name(scenario.name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "/etc", "a/b", ".git", "x" * 65, "a\n",
                                  "tab\there", "é"])
def test_check_name_refuses_what_is_not_one_folder_name(name):
    with pytest.raises(ValueError, match="not a name"):
        check_name(name)
    assert not re.fullmatch(NAME_PATTERN, name)


def test_names_may_be_slugs_with_dots_but_sessions_without():
    scenario = parse("name: lab-1.2\nsessions: [{name: my_client-2, steps: [get: /]}]\n"
                     "engines: [{engine: nginx, name: nginx-1.24_a}]\n", "x.yaml")
    assert (scenario.name, scenario.sessions[0].name, scenario.engines[0].name) == \
        ("lab-1.2", "my_client-2", "nginx-1.24_a")


def test_each_engine_default_comes_from_its_kind_s_option_spec():
    for kind, options in ENGINE_KIND_OPTIONS.items():
        engine = parse("sessions: [{steps: [get: /]}]\n"
                       f"engines: [{{engine: {kind}}}]\n").engines[0]
        assert set(options) == ENGINE_OPTIONS[kind]
        for key, spec in options.items():
            default = getattr(spec, "default", None)  # a record (behind:) has none
            assert getattr(engine, key) == default, (kind, key)
            assert getattr(Engine("e", kind), key) == default, (kind, key)
            assert spec.doc, (kind, key)


def test_header_values_and_numbers_in_messages_are_kept_as_written():
    scenario = parse("sessions: [{steps: [request: {headers: {X-A: 1e3, X-B: 0x10, "
                     "X-C: '007'}}]}]\nengines: [{engine: werkzeug}]\n")
    assert scenario.requests[0].headers == {"X-A": "1e3", "X-B": "0x10", "X-C": "007"}
    with pytest.raises(ScenarioError, match=r"got 0x1000$"):
        parse("sessions: [{steps: [get: /, sleep: 0x1000]}]\nengines: [{engine: werkzeug}]\n")


APP_FILE = ("def app(environ, start_response):\n    start_response('200 OK', [])\n"
            "    return [b'mine']\n")


def test_an_app_is_a_project_app_or_a_user_file_kept_as_resolved_path(tmp_path):
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "mine.py").write_text(APP_FILE)
    path = tmp_path / "lab.yaml"
    path.write_text("app: {file: apps/../apps/mine.py}\nsessions: [{steps: [get: /]}]\n"
                    "engines: [{engine: werkzeug},\n"
                    "          {engine: waitress, app: server.plain_app:app}]\n")
    scenario = load(path)
    assert scenario.app == AppFile(str((tmp_path / "apps" / "mine.py").resolve()), "app")
    assert scenario.engines[1].app == "server.plain_app:app"
    assert parse("sessions: [{steps: [get: /]}]\nengines: [{engine: werkzeug}]\n").app == \
        DEFAULT_APP == PROJECT_APPS[0]


def test_load_app_loads_project_apps_and_files_and_refuses_anything_else(tmp_path):
    assert callable(load_app("server.post_app:app"))
    (tmp_path / "mine.py").write_text(APP_FILE)
    app = load_app(AppFile(str(tmp_path / "mine.py")))
    assert app({}, lambda status, headers: None) == [b"mine"]
    assert load_app(f"{tmp_path / 'mine.py'}:app")({}, lambda *_: None) == [b"mine"]
    for bad in ("os:system", "builtins:eval", "server.app:keep_alive",
                AppFile("relative.py"), AppFile(str(tmp_path / "mine.py"), "os.system"),
                AppFile(str(tmp_path)), AppFile(str(tmp_path / "absent.py"))):
        with pytest.raises(SystemExit):
            load_app(bad)


def schema_validator() -> jsonschema.Draft202012Validator:
    committed = json.loads(scenario_schema.SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(committed)
    return jsonschema.Draft202012Validator(committed)


def test_the_committed_scenario_schema_is_what_the_specs_generate():
    assert scenario_schema.SCHEMA_FILE.read_text(encoding="utf-8") == scenario_schema.as_text(), \
        "schema/scenario.schema.json is stale: run python -m kalab.scenario_schema --write"


def test_the_schema_describes_every_field_with_its_bounds_and_default():
    schema = scenario_schema.json_schema()
    engine = schema["$defs"]["Engine"]["properties"]
    assert set(engine) == {"engine", "name", "app", "expect", *set().union(
        *ENGINE_OPTIONS.values())}
    # a number, or a lab's ${EXPR} (replaced before the number is checked)
    assert engine["keep_alive"] == {"description": "gunicorn, nginx: " +
                                    ENGINE_KIND_OPTIONS["gunicorn"]["keep_alive"].doc,
                                    "anyOf": [{"type": "number", "minimum": 0, "maximum": 3600},
                                              {"$ref": "#/$defs/Substituted"}],
                                    "default": 2.0}
    step = schema["$defs"]["Step"]["anyOf"][1]["properties"]
    assert step["sleep"]["anyOf"][0]["maximum"] == 3600
    assert step["get"]["anyOf"][0]["pattern"].startswith("^(?:/")
    assert schema["properties"]["port"]["default"] == 5000
    # a lab's params are what ${} is made of: never a ${} themselves
    assert "Substituted" not in json.dumps(schema["$defs"]["Course"]["properties"]["params"])

    def undocumented(node, where):
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                if isinstance(value, dict) and not value.get("description"):
                    yield f"{where}.{key}"
            for key, value in node.items():
                if key != "if":  # an engine kind's condition, not a field
                    yield from undocumented(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from undocumented(value, f"{where}[{i}]")

    assert list(undocumented(schema, "")) == []


def test_editors_find_the_schema_from_every_bundled_scenario():
    validator = schema_validator()
    for path in [ROOT / "lab.yaml", *sorted((ROOT / "scenarios").glob("*.yaml"))]:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        assert (path.parent / first.split("=", 1)[1]).resolve() == scenario_schema.SCHEMA_FILE
        errors = [e.message for e in validator.iter_errors(document(path.read_text(), str(path)))]
        if path.name.startswith("broken"):
            assert errors, "the schema must refuse what kalab check refuses here"
        else:
            assert errors == [], path


@pytest.mark.parametrize("name", ["report.json", "Summary.txt", "latest", "observer.log"])
def test_an_engine_may_not_take_the_name_of_a_file_every_run_writes(name):
    with pytest.raises(ScenarioError, match="a file every run writes"):
        parse(f"sessions: [{{steps: [get: /]}}]\nengines: [{{name: {name}, engine: werkzeug}}]\n")
