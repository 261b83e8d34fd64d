"""The WSGI apps a scenario may serve, and loading one.

The lab runs as root and scenarios come from strangers, so `app:` names no
arbitrary module (``app: os:system`` would import and call it). It is one of:

- one of the project's own apps, ``module:attribute`` from PROJECT_APPS,
  kept in the model as that string;
- a user's own file, written ``app: {file: my_app.py, attribute: app}`` with
  the path relative to the scenario file's folder; the scenario checker
  resolves it (symlinks too), requires a regular ``.py`` file inside that
  folder, and keeps it in the model as an `AppFile` (absolute path and
  attribute). On a command line it is ``/ABSOLUTE/PATH.py:ATTRIBUTE``
  (``str(app_file)``).

`load_app` loads any of these and refuses anything else.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The only modules a scenario may name; every other app is a file.
PROJECT_APPS = ("server.app:app", "server.plain_app:app", "server.post_app:app")
# How engines that import by module name (gunicorn, waitress) serve a file: this module
# loads the file the variable names (`server.user_app`).
FILE_SHIM = "server.user_app:app"
APP_FILE_VARIABLE = "KALAB_APP_FILE"
# How ASGI engines (uvicorn, hypercorn) get the WSGI app `server.asgi_app` wraps: one of
# the project's apps, or a file as /ABSOLUTE/PATH.py:ATTRIBUTE.
WSGI_APP_VARIABLE = "KALAB_WSGI_APP"
ATTRIBUTE_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,63}"


@dataclass(frozen=True)
class AppFile:
    """A user's WSGI app: ``attribute`` of the Python file at ``path`` (absolute and
    resolved; the scenario checker made sure it was a regular ``.py`` file in the
    scenario's folder)."""

    path: str
    attribute: str = "app"

    def __str__(self) -> str:
        return f"{self.path}:{self.attribute}"


def load_app(app: str | AppFile) -> Any:
    """The WSGI callable ``app`` names; SystemExit for anything not allowed."""
    if isinstance(app, str) and app not in PROJECT_APPS:
        path, _, attribute = app.rpartition(":")
        if path.startswith("/") and path.endswith(".py"):  # an AppFile's command-line form
            app = AppFile(path, attribute)
    if isinstance(app, AppFile):
        return _load_file(app)
    if app not in PROJECT_APPS:
        raise SystemExit(f"{app}: not one of the project's apps ({', '.join(PROJECT_APPS)}); "
                         "give your own app as a file")
    module_name, _, attribute = app.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _load_file(app: AppFile) -> Any:
    path = Path(app.path)
    # Checked again here: the file may have changed since the scenario was loaded.
    if not path.is_absolute() or path.suffix != ".py" or \
            not re.fullmatch(ATTRIBUTE_PATTERN, app.attribute):
        raise SystemExit(f"{app}: an app file is an absolute path to a .py file and a "
                         "Python name")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SystemExit(f"{app}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise SystemExit(f"{app}: not a regular file")
    spec = importlib.util.spec_from_file_location(f"kalab_app_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{app}: cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return getattr(module, app.attribute)
    except AttributeError:
        raise SystemExit(f"{app}: the file has no attribute {app.attribute!r}") from None
