"""A user's app file, for engines that import ``module:attribute`` (gunicorn, waitress).

Those engines import an app by module name only; a scenario's own app is a
file (`kalab.apps.AppFile`), which the server role names in the engine's
environment as ``KALAB_APP_FILE=/ABSOLUTE/PATH.py:ATTRIBUTE``. This module
loads it through `kalab.apps.load_app`, with the same checks as any app.
"""

from __future__ import annotations

import os

from kalab.apps import APP_FILE_VARIABLE, load_app

app = load_app(os.environ.get(APP_FILE_VARIABLE, "(KALAB_APP_FILE is not set)"))
