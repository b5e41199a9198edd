"""Signed replica heartbeats: only the deployment's own processes can report to its
control plane.

A heartbeat carries the statistics the rollout gates judge (requests, errors,
latency, realised-return pairs). The control-plane actor is a named Ray actor, so
any Ray client could call ``sync`` with invented numbers and promote or roll back a
canary at will. Each heartbeat is therefore sealed: its JSON body is sent as is,
with an HMAC-SHA256 of exactly those bytes under a key that only the deployment's
processes derive, and the actor refuses a body whose MAC does not verify, an
unknown format, a stale one and a replayed one (per replica, ``seq`` must grow).

The key: HMAC of ``serving-heartbeat:<deployment>`` under the registry's signing
key (``cluster.registry.signing.signing_key``: the ``registry.signing_key``
setting or the 0600 key file under ``$MLOPS_HOME/keys``), which the actor and the
replicas already hold to verify model artefacts. A client without that secret
cannot forge a heartbeat; one per deployment, so one deployment's replicas cannot
report to another's gates.

Cost: one ``json.dumps`` of the (small, drained) statistics and one HMAC per
heartbeat, every ``serving.sync_interval_s`` on the replica's sync task; the
request path is untouched. The body replaces the dict Ray would have pickled.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time

FORMAT = 1
MAX_AGE_S = 120.0       # a heartbeat older than this is refused (clocks of nodes ~agree)


class BadHeartbeat(ValueError):
    """A heartbeat that is not sealed with the deployment's key, stale, or replayed."""


def heartbeat_key(settings, deployment: str) -> bytes:
    """The deployment's heartbeat key, derived from the registry signing key."""
    from cluster.registry.signing import signing_key
    return hmac.new(signing_key(settings), f"serving-heartbeat:{deployment}".encode(),
                    hashlib.sha256).digest()


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


class HeartbeatSealer:
    """A replica's side: numbers and seals each heartbeat."""

    def __init__(self, key: bytes, replica_id: str):
        self.key, self.replica_id = key, replica_id
        self._seq = itertools.count(1)

    def seal(self, revision: int, loaded: dict, stats: dict | None) -> tuple[str, str]:
        body = json.dumps({"f": FORMAT, "replica": self.replica_id, "seq": next(self._seq),
                           "sent": time.time(), "revision": int(revision),
                           "loaded": loaded, "stats": stats or {}}, separators=(",", ":"))
        return body, _mac(self.key, body)


class HeartbeatOpener:
    """The control plane's side: verifies, then hands back the heartbeat's fields."""

    def __init__(self, key: bytes, max_age_s: float = MAX_AGE_S):
        self.key, self.max_age_s = key, max_age_s
        self._last_seq: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def open(self, body, mac) -> dict:
        if not isinstance(body, str) or not isinstance(mac, str) or \
                not hmac.compare_digest(_mac(self.key, body), mac):
            raise BadHeartbeat("heartbeat refused: not sealed with this deployment's key")
        beat = json.loads(body)
        if beat.get("f") != FORMAT:
            raise BadHeartbeat(f"heartbeat refused: format {beat.get('f')!r}, expected {FORMAT}")
        now = time.time()
        if abs(now - float(beat["sent"])) > self.max_age_s:
            raise BadHeartbeat(f"heartbeat refused: sent {now - float(beat['sent']):.0f} s ago")
        replica, seq = str(beat["replica"]), int(beat["seq"])
        with self._lock:
            last = self._last_seq.get(replica)
            if last is not None and seq <= last[0]:
                raise BadHeartbeat(f"heartbeat refused: replica {replica} sent seq {seq} "
                                   f"after {last[0]} (a replay)")
            self._last_seq[replica] = (seq, now)
            if len(self._last_seq) > 1000:      # forget replicas long gone
                for r in [r for r, (_, t) in self._last_seq.items()
                          if now - t > 2 * self.max_age_s]:
                    del self._last_seq[r]
        return beat
