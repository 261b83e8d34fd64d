"""The client role: ``python -m client SCENARIO --host ADDR --run-dir DIR``.

For each engine of the scenario in turn: wait until the server is ready,
run the scenario's sessions against it (with ``tls``: over HTTPS, trusting
the CA the server left in the engine's folder, writing the key log there),
and write ``client.json`` (what the client believed) and then
``client.done``. Against a server the lab did not start (``--target``) the
sessions go to its URL, their requests paced to the target's rate
(`kalab.target.Pace`). SIGTERM or SIGINT ends it at
once, after its link impairments (the delay line's rules) are removed.
"""

from __future__ import annotations

import argparse
import sys

from client.sessions import run_sessions
from kalab import handoff, impairment, lifeline
from kalab.certs import ClientTls, client_tls
from kalab.scenario import Scenario
from kalab.target import Pace, TargetEngine, parse


def main(argv: list[str] | None = None) -> int:
    parser = handoff.role_arguments("Run the scenario's client sessions against each engine.")
    parser.add_argument("--host", default="127.0.0.1", help="the server's address")
    args, scenario = handoff.parse_role(parser, argv, "client")
    lifeline.raise_on_sigterm()  # so that the delay line's rules go on SIGTERM too
    host = f"[{args.host}]" if ":" in args.host else args.host
    applied: list[impairment.Applied] = []
    if scenario.link:
        try:
            applied = impairment.apply_in_client_namespace(
                scenario.link, impairment.route_interface(args.host))
        except impairment.ImpairmentError as exc:
            print(f"kalab client: {exc}", file=sys.stderr)
            for engine in handoff.engines_to_run(scenario, args.engine):
                handoff.fail(handoff.shared_engine_dir(args.run_dir, engine), "client", str(exc))
            return 1
    try:
        return run_engines(scenario, args, host, applied)
    except KeyboardInterrupt:
        return 130
    finally:
        for done in applied:
            done.close()


def run_engines(scenario: Scenario, args: argparse.Namespace, host: str,
                applied: list[impairment.Applied]) -> int:
    for engine in handoff.engines_to_run(scenario, args.engine):
        folder = handoff.shared_engine_dir(args.run_dir, engine)
        try:
            handoff.wait_for(folder / handoff.SERVER_READY, 2 * handoff.ROLE_START_TIMEOUT,
                             what="the server")
            if args.together:  # every engine's sessions from one start
                handoff.wait_for(args.run_dir / handoff.ENGINES_READY,
                                 2 * handoff.ROLE_START_TIMEOUT, what="the other engines",
                                 failures_in=folder)
        except handoff.Aborted as exc:
            handoff.fail(folder, "client", str(exc))
            print(f"kalab client: {engine.name}: {exc}", file=sys.stderr)
            return 1
        if isinstance(engine, TargetEngine):  # a server the lab did not start: paced
            target = engine.server
            # Over HTTPS: this host's CAs or the one given, and the run's key log.
            tls = ClientTls(args.run_dir / handoff.TARGET_CA if target.ca else None,
                            folder / handoff.TLS_KEYLOG, scenario.tls.version) \
                if scenario.tls is not None else None
            records = run_sessions(scenario, parse(target.url).origin,
                                   folder / handoff.CLIENT_PROGRESS, tls=tls,
                                   pace=Pace(target.rate, target.burst))
        else:
            tls = client_tls(folder, scenario.tls.version) if scenario.tls is not None \
                else None
            scheme = "https" if tls is not None else "http"
            records = run_sessions(scenario, f"{scheme}://{host}:{scenario.port}",
                                   folder / handoff.CLIENT_PROGRESS, tls=tls)
        records["impairments"] = [a.describe() for a in applied]
        handoff.write_json(folder / handoff.CLIENT_RECORDS, records)
        if records["interrupted"]:  # the records so far are kept; the run is over
            raise KeyboardInterrupt
        (folder / handoff.CLIENT_DONE).touch()
    handoff.linger_until_observer_done(args.run_dir, args.engine)
    handoff.stay_until_stopped(args.stay)
    return 0


if __name__ == "__main__":
    handoff.exit_role(main())
