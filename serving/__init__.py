"""Ray Serve hosting of registered model versions behind weighted, sticky, shadowed
traffic splits, with gated rollouts and automatic rollback.

- ``policy``      which version answers a request (weights, sticky keys, shadow)
- ``versions``    a registry version loaded (integrity + feature set checked) and health-checked
- ``inputs``      features of instruments on a date, read from the lake's features table
- ``runtime``     one replica: loaded versions, the request path, sync with the control plane
- ``control``     the one interface to a deployment: operator calls (authorised,
  audited), replica heartbeats; built on ``desired`` (the persisted desired state)
  and ``replicas`` (the replica registry)
- ``rollout``     strategies blue_green / canary / ab / shadow, every registry move,
  reconciliation; talks to ``control`` through ``RolloutHost`` only
- ``gates``, ``stats``  what a rollout step is judged on
- ``predictions`` the buffered ``predictions`` Delta table
- ``auth``        bearer tokens with roles, audit log
- ``app``         the FastAPI routes; ``deployment`` the Serve ingress; ``clients`` local or actor
  access to the control plane

Imports ``cluster`` only (never ``tuning``); nothing in ``cluster`` imports it.
"""
