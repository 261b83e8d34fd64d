"""A sweep: the same scenario at many values of one parameter, each several times.

The race at the keep-alive edge is a probability, not a run: what a user
needs is, for each idle gap around the server's timeout, how often the
request was reused, quietly reconnected, or sent into a closing
connection. A scenario says so with ``sweep:``:

    sweep:
      param: gap                    # ${gap} anywhere in the scenario is the point's value
      between: [1.5, 3.5]           # low, low + step, ... up to high (at most 1001 points)
      step: 0.05                    #   or choose: [1.5, 2, 2.5]: the points themselves
      trials: 3                     # runs per point (1 to 50; default 3)
      at_once: 4                    # trials running at once at most (1 to 16; default 4)
      requests: [requests.2]        # whose fate is counted (default: every request but
                                    #   each session's first)
      expect:                       # at most 100, each about shares over points
        - claim: below 1.9 s every request was reused
          below: 1.9                # the points whose value is below this (optional)
          from: 2.1                 # ... at or above this (optional)
          request: requests.2       # one request (default: every counted one)
          engine: gthread           # one engine (default: every one)
          story: reused             # reused, new, replaced dropped connection, raced the
                                    #   FIN, unanswered, not sent, error, retried
          share: {at_least: 1}      # and/or at_most: a share of the trials, 0 to 1

The param is a number: ``${gap}`` (or ``${gap + 1}``) anywhere in the
scenario, as a lab's params are written (`kalab.course.lab`), stands for the
point's value; `kalab check` and a load without a point see the first. A
sweep cannot go with a lab's ``course.params``, and its engines carry no
``expect`` of their own: a sweep's claims are about shares, in
``sweep.expect``.

Each trial is a whole run of the scenario at one point, its engines at once
(`kalab.lab`), in a folder of its own, ``trials/P-T`` (point and trial
from 1), its report.json kept there: the raw record every share is counted
from. The sweep's report (`kalab.report.Sweep`) gives, per point, engine and
counted request, how many trials ended in each outcome: the first try's
story (`kalab.report.HttpRequest.story`; ``not sent`` when the request
never reached the wire), and beside it whether the client ended in an
error and whether the request was retried (a later try ``REF~N``).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kalab.course import lab as course_lab
from kalab.course.lab import NUMBER, PARAM_NAME, Param
from kalab.report import (
    Closing,
    ExpectationResult,
    Report,
    Side,
    Sweep,
    SweepEngine,
    SweepPoint,
    overall_verdict,
)
from kalab.spec import (
    NAME_PATTERN,
    NAME_RULE,
    ONE_LINE,
    Checker,
    ListOf,
    Node,
    OneOf,
    Record,
    Scalar,
    get,
)

STORIES = ("new", "reused", "replaced dropped connection", "raced the FIN", "unanswered",
           "not sent")
FLAGS = ("error", "retried")  # counted beside the story, not instead of it
OUTCOMES = STORIES + FLAGS
MAX_TRIALS = 50
MAX_AT_ONCE = 16
MAX_RUNS = 5000  # points x trials: a sweep of hours is a mistake, not a plan
# Requests all its runs send at most: also what bounds checking it, at every point (a file
# of 48,000 requests swept over 1,001 points took a quarter of an hour to refuse).
MAX_REQUESTS = 200_000
MAX_EXPECTATIONS = 100

SHARE = Scalar("number", "a share of the trials, from 0 to 1", minimum=0, maximum=1)
# A request as the engines' expectations name it (`kalab.scenario.REF`, which imports this).
REF = OneOf((Scalar("integer", "a request's number, from 1 in step order", minimum=1,
                    maximum=200_000),
             Scalar("string", "a request as SESSION.N (with several sessions), or its number",
                    pattern=r"([A-Za-z0-9_-]{1,64}\.)?[1-9][0-9]{0,8}", max_length=80,
                    says="a request is its number, or SESSION.N with several sessions")),
            "a request", "a request (N, or SESSION.N with several sessions)")
SWEEP_EXPECTATION = Record("a claim about a sweep's shares: at the points chosen (below, "
                           "from), of the trials each ended in the story at least or at "
                           "most that share", {
                               "claim": Scalar("string", "the sentence reported if the wire "
                                               "refutes it", pattern=ONE_LINE,
                                               max_length=1000, says="a claim is one line "
                                               "without control characters"),
                               "below": dataclasses.replace(
                                   NUMBER, doc="only the points whose value is below this"),
                               "from": dataclasses.replace(
                                   NUMBER, doc="only the points whose value is at least this"),
                               "request": dataclasses.replace(
                                   REF, doc="one counted request (default: each)"),
                               "engine": Scalar("string", "one engine (default: each)",
                                                pattern=NAME_PATTERN, max_length=64,
                                                says=f"an engine's name is {NAME_RULE}"),
                               "story": Scalar("string", "the outcome counted",
                                               choices=OUTCOMES),
                               "share": Record("the share of the trials, at each point",
                                               {"at_least": SHARE, "at_most": SHARE}),
                           }, required=("story", "share"))
SWEEP = Record("the same scenario at many values of one param (${NAME} in the scenario), "
               "each several times; the share of each request's outcomes per point", {
                   "param": PARAM_NAME,
                   "choose": ListOf(NUMBER, "the points: the param's values", 1001),
                   "between": ListOf(NUMBER, "[low, high]: the points are low, low + step, "
                                     "... up to high", 2, min_items=2),
                   "step": Scalar("number", "the step from low (with between)",
                                  maximum=course_lab.MAX_MAGNITUDE, exclusive_minimum=0),
                   "trials": Scalar("integer", "runs of the scenario at each point", 3, 1,
                                    MAX_TRIALS),
                   "at_once": Scalar("integer", "trials running at once at most, each with "
                                     "every engine in namespaces of its own", 4, 1,
                                     MAX_AT_ONCE),
                   "requests": ListOf(REF, "the requests whose outcome is counted (default: "
                                      "every request but each session's first)", 100),
                   "expect": ListOf(SWEEP_EXPECTATION, "claims about the shares",
                                    MAX_EXPECTATIONS, min_items=0),
               }, required=("param",), one_of=("choose", "between"))


@dataclass(frozen=True)
class SweepExpectation:
    claim: str
    line: int
    story: str
    at_least: float | None = None
    at_most: float | None = None
    below: float | None = None
    start: float | None = None  # `from`
    request: str | None = None
    engine: str | None = None

    def covers(self, point: SweepPoint) -> bool:
        return (self.below is None or point.value < self.below) and \
            (self.start is None or point.value >= self.start) and \
            (self.request is None or point.request == self.request) and \
            (self.engine is None or point.engine == self.engine)


@dataclass(frozen=True)
class SweepPlan:
    """A scenario's ``sweep:`` block, checked."""

    param: Param
    trials: int
    at_once: int
    requests: tuple[str, ...]
    expect: tuple[SweepExpectation, ...]
    line: int

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.param.values)


def read_param(checker: Checker, node: Node) -> Param:
    """The sweep's param and its points, read before the rest (``${NAME}`` needs them)."""
    checker.check(SWEEP, node, "sweep")
    return course_lab.param(checker, node.value["param"].value, node, "sweep")


def build(checker: Checker, node: Node, param: Param, refs: dict[str, Any],
          first_refs: set[str], engines: tuple[str, ...]) -> SweepPlan:
    """The checked plan; ``refs`` the scenario's requests, ``first_refs`` each session's
    first, ``engines`` the engines' names."""
    fields = node.value
    trials = get(SWEEP, fields, "trials")
    if len(param.values) * trials > MAX_RUNS:
        raise checker.fail(node, "sweep.trials", f"{len(param.values)} points x {trials} "
                           f"trials is more than the {MAX_RUNS} runs a sweep may make")
    if len(param.values) * trials * len(refs) > MAX_REQUESTS:
        raise checker.fail(node, "sweep", f"{len(param.values)} points x {trials} trials x "
                           f"{len(refs)} requests is more than the {MAX_REQUESTS:,} requests "
                           "a sweep may send")

    def ref(item: Node, where: str) -> str:
        name = str(item.value)
        if name not in refs:
            raise checker.fail(item, where, f"no request {name!r} in the sessions "
                               f"(known: {', '.join(list(refs)[:20])})")
        return name

    if "requests" in fields:
        requests = tuple(ref(item, "sweep.requests") for item in fields["requests"].value)
    else:
        requests = tuple(r for r in refs if r not in first_refs)
    if not requests:
        raise checker.fail(node, "sweep.requests", "nothing to count: every session has "
                           "one request; give sweep.requests")
    expect = []
    for i, item in enumerate(fields["expect"].value if "expect" in fields else []):
        where, f = f"sweep.expect[{i}]", item.value
        share = f["share"].value
        if not share:
            raise checker.fail(f["share"], f"{where}.share", "give at_least or at_most")
        request = ref(f["request"], f"{where}.request") if "request" in f else None
        if request is not None and request not in requests:
            raise checker.fail(f["request"], f"{where}.request", f"request {request} is not "
                               f"counted (counted: {', '.join(requests)})")
        engine = f["engine"].value if "engine" in f else None
        if engine is not None and engine not in engines:
            raise checker.fail(f["engine"], f"{where}.engine", f"no engine {engine!r} "
                               f"(known: {', '.join(engines)})")
        e = SweepExpectation(
            "", item.line, f["story"].value,
            at_least=share["at_least"].value if "at_least" in share else None,
            at_most=share["at_most"].value if "at_most" in share else None,
            below=f["below"].value if "below" in f else None,
            start=f["from"].value if "from" in f else None, request=request, engine=engine)
        expect.append(dataclasses.replace(e, claim=get(SWEEP_EXPECTATION, f, "claim")
                                          or _words(e)))
    return SweepPlan(param, trials, get(SWEEP, fields, "at_once"), requests, tuple(expect),
                     node.line)


def _words(e: SweepExpectation) -> str:
    bounds = [f"at least {e.at_least:.0%}" if e.at_least is not None else "",
              f"at most {e.at_most:.0%}" if e.at_most is not None else ""]
    where = [f"below {e.below:g}" if e.below is not None else "",
             f"from {e.start:g}" if e.start is not None else ""]
    what = f"request {e.request}" if e.request else "each counted request"
    return (f"{what}: {' and '.join(b for b in bounds if b)} of the trials {e.story}"
            + (f" at every point {' and '.join(w for w in where if w)}" if any(where)
               else " at every point")
            + (f" ({e.engine})" if e.engine else ""))


# -------------------------------------------------------------- counting

def trial_folder(results: Path, point: int, trial: int) -> Path:
    """The folder of trial ``trial`` at point ``point`` (both from 0)."""
    return results / "trials" / f"{point + 1:04d}-{trial + 1:02d}"


def outcomes(report: Report, refs: tuple[str, ...]) -> dict[tuple[str, str], tuple[str, bool,
                                                                                  bool]]:
    """Per (engine, counted request) of one trial: the first try's story, whether the
    client ended in an error, and whether it was retried."""
    out = {}
    for run in report.runs:
        tries: dict[str, list] = {}
        for request in run.requests:
            tries.setdefault(request.id.split("~", 1)[0], []).append(request)
        unsent = {str(record.get("ref")) for record in run.client_errors}
        for ref in refs:
            seen = tries.get(ref, [])
            first = next((r for r in seen if r.id == f"{ref}~1"), None) or \
                next((r for r in seen if r.id == ref), None)
            final = next((r for r in seen if r.id == ref), None)
            story = (first.story or "unanswered") if first is not None else "not sent"
            error = ref in unsent or final is None or \
                bool(final.client and final.client.get("error"))
            out[(run.engine, ref)] = (story, error, len(seen) > 1)
    return out


def count(plan: SweepPlan, sessions: dict[str, str], engines: tuple[str, ...],
          trials: list[tuple[int, Report]]) -> list[SweepPoint]:
    """The points of the sweep, from each trial's (point index, report); ``sessions``
    maps a counted request to its session's client kind."""
    tallies: dict[tuple[int, str, str], Counter] = {}
    for point, report in trials:
        for (engine, ref), (story, error, retried) in outcomes(report, plan.requests).items():
            tally = tallies.setdefault((point, engine, ref), Counter())
            tally["trials"] += 1
            tally[story] += 1
            tally["error"] += error
            tally["retried"] += retried
    points = []
    for index, value in enumerate(plan.values):
        for engine in engines:
            for ref in plan.requests:
                tally = tallies.get((index, engine, ref), Counter())
                n = tally["trials"]
                counts = {o: tally[o] for o in OUTCOMES if tally[o]}
                points.append(SweepPoint(
                    value=value, engine=engine, request=ref, client=sessions[ref], trials=n,
                    counts=counts,
                    shares={o: round(c / n, 4) for o, c in counts.items()} if n else {}))
    return points


def check(plan: SweepPlan, points: list[SweepPoint]) -> list[ExpectationResult]:
    results = []
    for e in plan.expect:
        covered = [p for p in points if e.covers(p) and p.trials]
        wrong = [p for p in covered if not _holds(e, p.shares.get(e.story, 0.0))]
        if not covered:
            observed = "no point was run where this applies"
        elif wrong:
            shown = "; ".join(f"{p.engine} {p.request} at {p.value:g}: "
                              f"{p.shares.get(e.story, 0.0):.0%}" for p in wrong[:5])
            observed = f"{len(wrong)} of {len(covered)} points off: {shown}" + \
                ("; ..." if len(wrong) > 5 else "")
        else:
            observed = f"all {len(covered)} points hold"
        results.append(ExpectationResult(claim=e.claim, kind="sweep", line=e.line,
                                         passed=bool(covered) and not wrong,
                                         observed=observed))
    return results


def _holds(e: SweepExpectation, share: float) -> bool:
    return (e.at_least is None or share >= e.at_least - 1e-9) and \
        (e.at_most is None or share <= e.at_most + 1e-9)


def engine_marks(engines: tuple[str, ...], trials: list[tuple[int, Report]]) -> list[SweepEngine]:
    """Per engine, over every trial: the Keep-Alive timeout it advertised (the most common)
    and the idle time after which it closed connections itself (median, low, high)."""
    out = []
    for engine in engines:
        advertised: Counter = Counter()
        idle: list[float] = []
        for _, report in trials:
            for run in (r for r in report.runs if r.engine == engine):
                advertised.update(r.advertised_timeout for r in run.requests
                                  if r.advertised_timeout is not None)
                idle += [c.idle_before_close for c in run.connections
                         if c.closed_by == Side.SERVER and c.closed_with == Closing.FIN
                         and c.idle_before_close is not None
                         and c.requests]
        out.append(SweepEngine(
            engine=engine,
            advertised_timeout=advertised.most_common(1)[0][0] if advertised else None,
            enforced_timeout=round(statistics.median(idle), 4) if idle else None,
            enforced_low=round(min(idle), 4) if idle else None,
            enforced_high=round(max(idle), 4) if idle else None))
    return out


def result(plan: SweepPlan, scenario_sessions: dict[str, str], engines: tuple[str, ...],
           trials: list[tuple[int, str, Report]], planned: int) -> tuple[Sweep, str]:
    """The sweep's record from its trials (point index, folder, report), and its verdict."""
    pairs = [(point, report) for point, _, report in trials]
    points = count(plan, scenario_sessions, engines, pairs)
    expectations = check(plan, points)
    doubtful = sorted(folder for _, folder, report in trials
                      if report.verdict in ("inconclusive", "interrupted"))
    verdicts = [("pass" if e.passed else "fail") for e in expectations]
    if doubtful:
        verdicts.append("inconclusive")
    verdict = overall_verdict(verdicts)
    lags: dict[str, list[float]] = {}
    for _, report in pairs:
        for run in report.runs:
            for request in run.requests:
                if request.send_lag is not None and "~" not in request.id:
                    lags.setdefault(request.id, []).append(round(request.send_lag, 6))
    sweep = Sweep(param=plan.param.name, values=list(plan.values), trials=plan.trials,
                  at_once=plan.at_once, requests=list(plan.requests), planned_trials=planned,
                  trial_reports=sorted(f"{folder}/report.json" for _, folder, _ in trials),
                  doubtful_trials=doubtful, engines=engine_marks(engines, pairs),
                  points=points, expectations=expectations,
                  send_lags=dict(sorted(lags.items())))
    return sweep, verdict
