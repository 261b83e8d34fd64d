"""The WSGI script Apache's mod_wsgi loads: the scenario's app, named in the environment.

mod_wsgi runs Debian's /usr/bin/python3 with its own packages (python3-flask
from Debian), not the lab's virtualenv; the Apache kind puts the project's
folder on its path (WSGIPythonPath) and names the app in ``KALAB_WSGI_APP``,
which Apache's processes inherit: one of the project's apps, or a user's
file as ``/ABSOLUTE/PATH.py:ATTRIBUTE``, loaded by `kalab.apps.load_app`.
"""

import os

from kalab.apps import WSGI_APP_VARIABLE, load_app

application = load_app(os.environ.get(WSGI_APP_VARIABLE, "(KALAB_WSGI_APP is not set)"))
