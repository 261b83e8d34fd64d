"""The server role: the tutorial's app under each engine kind (server/engines/)."""
