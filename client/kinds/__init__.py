"""The client kinds, one module each (`kalab.kinds.ClientKind`).

Every module here but those starting with ``_`` is a kind, found by
`kalab.kinds.client_kinds`: ``requests.py`` defines ``KIND = Requests``, and
so on. ``_shared.py`` holds the settings several kinds take, ``_urllib3.py``
what the kinds built on urllib3 share.
"""
