"""keepalive-lab: proves from the wire how HTTP keep-alive really behaves."""

__version__ = "0.1.0"
