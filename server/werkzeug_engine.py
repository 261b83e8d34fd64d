"""Werkzeug's development server, started exactly as `app.run()` starts it.

Run as ``python -m server.werkzeug_engine APP HOST PORT threaded|unthreaded [CERT KEY]``
(with CERT and KEY it serves HTTPS, as ``app.run(ssl_context=(CERT, KEY))`` does);
a WSGI app that is not Flask's gets `werkzeug.serving.run_simple`, which is
what Flask's `app.run()` calls.
The debugger and the reloader are off whatever the environment says:
the debugger would run arbitrary code for anyone who reaches the port.
"""

from __future__ import annotations

import os
import sys

from kalab.apps import load_app


def main(argv: list[str]) -> None:
    app_ref, host, port, threading, *certificate = argv
    ssl_context = tuple(certificate) if certificate else None
    for var in ("FLASK_DEBUG", "FLASK_RUN_FROM_CLI", "WERKZEUG_RUN_MAIN"):
        os.environ.pop(var, None)
    app = load_app(app_ref)
    if hasattr(app, "run"):  # a Flask app: as the tutorial starts it
        app.run(host=host, port=int(port), debug=False, use_reloader=False,
                use_debugger=False, threaded=threading == "threaded", ssl_context=ssl_context)
    else:  # any other WSGI callable (a user's own): the server app.run() itself starts
        from werkzeug.serving import run_simple

        run_simple(host, int(port), app, use_reloader=False, use_debugger=False,
                   threaded=threading == "threaded", ssl_context=ssl_context)


if __name__ == "__main__":
    main(sys.argv[1:])
