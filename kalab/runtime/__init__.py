"""Where the roles run: network namespaces, loopback, or containers.

One module per concept, as in Mininet: `node` (a place that runs role
processes), `link` (a veth pair), `netns` and `local` (the two topologies),
`target` (the roles on this host, the server one the lab did not start),
`state` and `clean` (what a run created, and removing it after a crash).
Every runtime starts the very same role entry points (`python -m server`,
`python -m client`, `python -m observer`).
"""
