"""junit.xml: one test case per expectation, per engine, for CI systems and autograders.

Each engine is a test suite; an expectation the wire refuted is a
``<failure>``; an engine whose capture cannot be trusted (inconclusive) has
an ``<error>`` on each of its cases instead, since the lab will not
conclude; an engine cut short by an interrupt, or that never ran, has one
``<skipped>`` case. XML cannot carry most control characters at all, so every text
first goes through `view.visible`; ElementTree escapes the rest.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from kalab import summary
from kalab.render.text import visible
from kalab.report import EngineRun, Report


def _suite(report: Report, run: EngineRun, parent: ET.Element) -> tuple[int, int, int]:
    cap = run.capture
    duration = (cap.stopped_at - cap.started_at) if cap.started_at and cap.stopped_at else 0.0
    suite = ET.SubElement(parent, "testsuite", name=visible(run.engine))
    props = ET.SubElement(suite, "properties")
    for key, value in (("description", run.description), ("kind", run.kind),
                       ("version", run.version), ("listen", run.listen),
                       ("verdict", run.verdict), ("pcap", cap.pcap),
                       ("scenario", report.scenario), ("runtime", report.runtime)):
        if value is not None:
            ET.SubElement(props, "property", name=key, value=visible(value))
    inconclusive = run.verdict == "inconclusive"
    why = "; ".join(cap.problems) or "the capture cannot be trusted"
    cases = [(e.claim, e.line, e.passed, e.observed, e.kind) for e in run.expectations]
    if inconclusive and not cases:
        cases = [("the capture can be trusted", 0, False, why, "capture")]
    if run.verdict == "interrupted":
        return _skipped(report, run.engine, "the run was cut short while this engine ran: "
                        "its expectations were not checked", parent)
    failures = errors = 0
    for claim, line, passed, observed, kind in cases:
        case = ET.SubElement(suite, "testcase", name=visible(claim),
                             classname=visible(f"{report.name}.{run.engine}"), time="0")
        if report.scenario and line:
            case.set("file", visible(report.scenario))
            case.set("line", str(line))
        where = f"{report.scenario}:{line}" if report.scenario else f"line {line}"
        if inconclusive:
            errors += 1
            error = ET.SubElement(case, "error", type="inconclusive",
                                  message=visible(f"inconclusive: {why}"))
            error.text = visible(f"{claim} ({where})\nwire: {observed}\ncapture: {why}")
        elif not passed:
            failures += 1
            failure = ET.SubElement(case, "failure", type=visible(kind),
                                    message=visible(f"wire: {observed}"))
            failure.text = visible(f"{claim} ({where})\nwire: {observed}")
    by_id = summary.requests_by_id(run)
    out = [summary.connection_story(c, by_id) for c in run.connections if not c.probe]
    out += run.disagreements + [f"capture problem: {p}" for p in cap.problems]
    ET.SubElement(suite, "system-out").text = "\n".join(visible(line) for line in out)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", f"{duration:.3f}")
    if cap.started_at:
        suite.set("timestamp", datetime.fromtimestamp(cap.started_at, UTC)
                  .strftime("%Y-%m-%dT%H:%M:%S"))
    return len(cases), failures, errors


def _skipped(report: Report, engine: str, why: str,
             parent: ET.Element) -> tuple[int, int, int]:
    """A suite whose one case was skipped: an engine cut short, or one that never ran."""
    suite = ET.SubElement(parent, "testsuite", name=visible(engine), tests="1", failures="0",
                          errors="0", skipped="1", time="0")
    case = ET.SubElement(suite, "testcase", name="the engine's expectations",
                         classname=visible(f"{report.name}.{engine}"), time="0")
    ET.SubElement(case, "skipped", message=visible(why))
    return 1, 0, 0


def render_junit(report: Report) -> str:
    """The JUnit XML document as a string."""
    root = ET.Element("testsuites", name=visible(f"kalab {report.name}"))
    totals = [_suite(report, run, root) for run in report.runs]
    totals += [_skipped(report, engine, f"the run was interrupted during {report.phase}: "
                        "this engine did not run", root) for engine in report.engines_not_run]
    root.set("tests", str(sum(t[0] for t in totals)))
    root.set("failures", str(sum(t[1] for t in totals)))
    root.set("errors", str(sum(t[2] for t in totals)))
    root.set("time", f"{report.finished_at - report.started_at:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
