"""The scenario's WSGI app as an ASGI app, as people run Flask under uvicorn or hypercorn:
wrapped in asgiref's `WsgiToAsgi`.

The engine imports this module by name (``server.asgi_app:app``); the WSGI
app it wraps is named in its environment, ``KALAB_WSGI_APP``: one of the
project's apps, or a user's file as ``/ABSOLUTE/PATH.py:ATTRIBUTE``, loaded by
`kalab.apps.load_app` with the same checks as any app.
"""

from __future__ import annotations

import os

from asgiref.wsgi import WsgiToAsgi

from kalab.apps import WSGI_APP_VARIABLE, load_app

app = WsgiToAsgi(load_app(os.environ.get(WSGI_APP_VARIABLE, "(KALAB_WSGI_APP is not set)")))
