"""The client role: each scenario session a client of its kind (client/kinds/)."""
