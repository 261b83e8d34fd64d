"""The server role: the tutorial's app under a chosen engine."""
