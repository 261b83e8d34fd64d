"""From a run folder to a verdict: a capture that cannot be trusted never concludes."""

from __future__ import annotations

import json

import pytest
from conftest import run_kalab
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kalab import evidence, handoff
from kalab.pcap import PcapWriter
from kalab.scenario import parse

SCENARIO = """\
sessions: [{steps: [get: /keep-alive]}]
engines:
  - engine: werkzeug
    expect: [connections: 1]
"""
CLIENT, SERVER = "10.213.0.2", "10.213.0.1"
T0 = 1_700_000_000.0


def frame(sport, dport, flags, seq, ack=0, data=b""):
    src, dst = (CLIENT, SERVER) if dport == 5000 else (SERVER, CLIENT)
    packet = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags,
                                                  seq=seq, ack=ack)
    return bytes(packet / Raw(load=data)) if data else bytes(packet)


REQUEST = b"GET /keep-alive HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
KEPT = RESPONSE.replace(b"Connection: close", b"Connection: keep-alive")


def exchange(with_syn: bool) -> list[tuple[float, bytes]]:
    frames = []
    if with_syn:
        frames += [(T0, frame(40000, 5000, "S", 100)),
                   (T0 + 0.001, frame(5000, 40000, "SA", 900, 101)),
                   (T0 + 0.002, frame(40000, 5000, "A", 101, 901))]
    frames += [(T0 + 0.010, frame(40000, 5000, "PA", 101, 901, REQUEST)),
               (T0 + 0.020, frame(5000, 40000, "PA", 901, 101 + len(REQUEST), RESPONSE)),
               (T0 + 0.030, frame(5000, 40000, "FA", 901 + len(RESPONSE), 101 + len(REQUEST))),
               (T0 + 0.031, frame(40000, 5000, "FA", 101 + len(REQUEST), 902 + len(RESPONSE)))]
    return frames


def write_pcap(path, frames):
    with PcapWriter(path) as writer:
        for ts, data in frames:
            writer.write(ts, data)


def probed_exchange() -> list[tuple[float, bytes]]:
    """The exchange, but kept alive: the client's socket sends a TCP keep-alive probe (one
    behind, no data) each second while idle, and the server closes 5 s after its response."""
    sent, answered = 101 + len(REQUEST), 901 + len(KEPT)
    frames = exchange(True)[:3] + [
        (T0 + 0.010, frame(40000, 5000, "PA", 101, 901, REQUEST)),
        (T0 + 0.020, frame(5000, 40000, "PA", 901, sent, KEPT)),
        (T0 + 0.021, frame(40000, 5000, "A", sent, answered))]
    for second in (1, 2, 3):
        frames += [(T0 + 0.020 + second, frame(40000, 5000, "A", sent - 1, answered)),
                   (T0 + 0.0201 + second, frame(5000, 40000, "A", answered, sent))]
    return frames + [(T0 + 5.020, frame(5000, 40000, "FA", answered, sent)),
                     (T0 + 5.021, frame(40000, 5000, "FA", sent, answered + 1))]


def run_folder(tmp_path, with_syn=True, kernel_drops=0, impairments=(), frames=None):
    write_pcap(tmp_path / handoff.CAPTURE_PCAP, frames or exchange(with_syn))
    handoff.write_json(tmp_path / handoff.CAPTURE_STATS, {
        "interface": "test0", "filter": "tcp port 5000", "pcap": handoff.CAPTURE_PCAP,
        "started_at": T0 - 1,
        "stopped_at": T0 + 1, "packets": 7, "duplicates_dropped": 0,
        "kernel_drops": kernel_drops,
        "problems": [f"the kernel dropped {kernel_drops} packet(s)"] if kernel_drops else [],
        "impairments": list(impairments)})
    handoff.write_json(tmp_path / handoff.CLIENT_RECORDS, {"requests": [{
        "ref": "1", "session": "s1", "method": "GET", "path": "/keep-alive",
        "planned_at": T0, "sent_at": T0 + 0.005, "finished_at": T0 + 0.025,
        "local_port": 40000, "status": 200, "response_connection": "close",
        "response_keep_alive": None, "error": None, "error_cause": None, "urllib3": []}]})
    scenario = parse(SCENARIO, "lab.yaml")
    return evidence.engine_run(tmp_path, scenario, scenario.engines[0], "capture.pcap")


def test_a_clean_capture_concludes(tmp_path):
    run = run_folder(tmp_path)
    assert run.capture.problems == []
    assert run.verdict == "pass"
    assert run.requests[0].id == "1" and run.requests[0].client["local_port"] == 40000


def test_kernel_drops_make_the_run_inconclusive(tmp_path):
    run = run_folder(tmp_path, kernel_drops=3)
    assert run.verdict == "inconclusive"
    assert any("dropped 3" in p for p in run.capture.problems)


def test_a_delay_line_that_overflowed_makes_the_run_inconclusive(tmp_path):
    (tmp_path / "held").mkdir()
    (tmp_path / "lost").mkdir()
    held = "server_to_client: delay 100ms by the user-space delay line (NFQUEUE 1), " \
        "coming in by eth0: 7 packets delayed, 0 dropped as loss"
    assert run_folder(tmp_path / "held", impairments=[held]).verdict == "pass"
    overflowed = held + ", 2 LOST TO QUEUE OVERFLOW"
    run = run_folder(tmp_path / "lost", impairments=[overflowed])
    assert run.verdict == "inconclusive"
    assert run.capture.problems == [f"the link lost packets it was not told to: {overflowed}"]


def test_a_capture_that_missed_the_syn_is_inconclusive(tmp_path):
    run = run_folder(tmp_path, with_syn=False)
    assert run.verdict == "inconclusive"
    assert any("no SYN seen" in p for p in run.capture.problems)


def test_kalab_analyze_exits_3_on_a_capture_that_started_late(tmp_path):
    pcap = tmp_path / "late.pcap"
    write_pcap(pcap, exchange(with_syn=False))
    done = run_kalab("analyze", str(pcap), "--port", "5000", "--json")
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "inconclusive"
    assert report["runs"][0]["connections"][0]["complete"] is False


def test_kalab_analyze_reports_a_clean_capture(tmp_path):
    pcap = tmp_path / "ok.pcap"
    write_pcap(pcap, exchange(with_syn=True))
    done = run_kalab("analyze", str(pcap), "--json")
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert run["options"]["ports"] == [5000]  # found from the SYN-ACK
    (conn,) = run["connections"]
    assert conn["closed_by"] == "server" and conn["requests"] == ["w1"]


def test_kalab_analyze_refuses_a_truncated_file_naming_the_offset(tmp_path):
    pcap = tmp_path / "cut.pcap"
    write_pcap(pcap, exchange(with_syn=True))
    data = pcap.read_bytes()
    pcap.write_bytes(data[:-10])
    done = run_kalab("analyze", str(pcap))
    assert done.returncode == 2
    assert "byte " in done.stderr and "truncated" in done.stderr


def _wire_request(number: int, connection: int, sent_at: float, depth: int):
    from kalab.report import HttpRequest

    return HttpRequest(id=f"w{number}", connection=connection, depth=depth, reused=depth > 1,
                       method="GET", target="/keep-alive", version="HTTP/1.1", sent_at=sent_at,
                       response_at=sent_at + 0.002, response_end_at=sent_at + 0.002, status=200)


def _client_record(ref: str, sent_at: float, port: int, **extra):
    return {"ref": ref, "session": "s1", "method": "GET", "path": "/keep-alive",
            "planned_at": sent_at - 0.001, "sent_at": sent_at, "finished_at": sent_at + 0.004,
            "local_port": port, "status": 200, "error": None, "error_cause": None,
            "urllib3": [], **extra}


def test_requests_close_together_join_one_to_one():
    from kalab.report import Connection

    conn = Connection(id=1, client="10.213.0.2:40000", server="10.213.0.1:5000", syn_at=T0,
                      syn_retransmits=0, established_at=T0, refused=False, requests=[],
                      last_response_at=None, last_data_at=None, first_fin_by=None,
                      first_fin_at=None, second_fin_at=None, rst_by=None, rst_at=None,
                      closed_by=None, closed_with=None, idle_before_close=None,
                      advertised_timeout=None, probe=False, complete=True, gaps=0)
    # Ten requests 10 ms apart on one connection: each client call brackets its own.
    wire = [_wire_request(n, 1, T0 + 0.01 * n + 0.0005, n + 1) for n in range(10)]
    records = [_client_record(str(n + 1), T0 + 0.01 * n, 40000) for n in range(10)]
    missing, problems, disagreements = evidence.join_client(wire, [conn], records)
    assert (missing, problems) == ([], [])
    assert [r.id for r in wire] == [str(n + 1) for n in range(10)]
    assert all(r.attempt == 1 for r in wire)
    assert [r.story for r in wire] == ["new"] + ["reused"] * 9
    # urllib3 logged no new connection for the first: that is a disagreement.
    assert disagreements == ["request 1: urllib3 believed it reused a connection, but the wire "
                             "shows it opened #1"]
    assert conn.requests == [str(n + 1) for n in range(10)]
    assert wire[3].send_lag == pytest.approx(0.0015, abs=1e-6)


def test_the_summary_prints_wire_text_as_text(tmp_path):
    from kalab import summary
    from kalab.report import Report

    run = run_folder(tmp_path)
    run.disagreements.append("request [bold]1[/] said [red")
    run.capture.problems.append("a problem with [/] in it")
    text = summary.as_text(Report(schema="kalab.report/1", scenario="[x].yaml", name="n",
                                  runtime="netns", started_at=T0, finished_at=T0, runs=[run],
                                  verdict="pass", exit_code=0))
    assert "belief vs wire: request [bold]1[/] said [red" in text
    assert "capture problem: a problem with [/] in it" in text


def test_keepalive_probes_are_counted_and_said_beside_the_idle_time(tmp_path):
    from kalab import summary

    run = run_folder(tmp_path, frames=probed_exchange())
    (conn,) = run.connections
    assert conn.keepalive_probes == 3
    assert conn.idle_before_close == pytest.approx(5.0, abs=1e-6)  # probes are not data
    assert conn.closed_by == "server" and run.verdict == "pass"
    assert summary.connection_story(conn) == (
        "#1 (10.213.0.2:40000) carried 1: closed by the server 5.000 s after the last data "
        "(3 TCP keep-alive probes on it, not data); no Keep-Alive timeout was advertised")


def _connection(number: int, port: int):
    from kalab.report import Connection

    return Connection(id=number, client=f"10.213.0.2:{port}", server="10.213.0.1:5000",
                      syn_at=T0, syn_retransmits=0, established_at=T0, refused=False,
                      requests=[], last_response_at=None, last_data_at=None, first_fin_by=None,
                      first_fin_at=None, second_fin_at=None, rst_by=None, rst_at=None,
                      closed_by=None, closed_with=None, idle_before_close=None,
                      advertised_timeout=None, probe=False, complete=True, gaps=0)


def test_two_sessions_sending_the_same_request_at_once_keep_their_own():
    # a.1 and b.1 leave together, each on its own connection; a's call returns later
    wire = [_wire_request(1, 2, T0 + 0.0005, 1), _wire_request(2, 1, T0 + 0.0008, 1)]
    records = [_client_record("a.1", T0, 40000, session="a", finished_at=T0 + 0.006),
               _client_record("b.1", T0 + 0.0001, 40002, session="b")]
    missing, problems, _ = evidence.join_client(
        wire, [_connection(1, 40000), _connection(2, 40002)], records)
    assert (missing, problems) == ([], [])
    assert {r.id: r.connection for r in wire} == {"a.1": 1, "b.1": 2}  # no try taken


def test_a_request_sent_right_after_the_previous_one_returned_is_the_next_one_s():
    # curl's --next: the second request leaves 0.3 ms after the first call returned,
    # inside the first record's slack
    wire = [_wire_request(1, 1, T0 + 0.001, 1), _wire_request(2, 1, T0 + 0.0053, 2)]
    records = [_client_record("1", T0, 40000), _client_record("2", T0 + 0.0052, 40000)]
    missing, problems, _ = evidence.join_client(wire, [_connection(1, 40000)], records)
    assert (missing, problems) == ([], [])
    assert [(r.id, r.attempt) for r in wire] == [("1", 1), ("2", 1)]
