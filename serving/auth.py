"""Bearer tokens with roles, and the audit log of mutating calls.

Roles are ordered ``viewer < operator < admin``; an endpoint names the least
role it needs. Tokens come from settings (``api.tokens`` or
``MLOPS_API_TOKENS=role:token,...``, or only their sha256 in ``api.token_hashes`` /
``MLOPS_API_TOKEN_HASHES``, which is what actors and replicas get: see
``hashed_token_env``); with none configured every protected endpoint answers 401
(closed by default). Only a sha256 of each token is kept in memory, and the audit
log names a caller by role and a short fingerprint, never by the token itself.

The audit log is JSON lines under ``$MLOPS_HOME/audit/api.jsonl``: who, what
(action and target), when, and the result, for every mutating call, refused
ones included. Each record is one ``write`` on a file opened for append, so
replicas writing at once never interleave a line.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPBearer

ROLE_RANK = {"viewer": 1, "operator": 2, "admin": 3}
BEARER_SCHEME = "HTTPBearer"   # the scheme's name in the OpenAPI document
# Declares the scheme for the docs ("Authorize"); the check itself is ours.
_bearer = HTTPBearer(auto_error=False, scheme_name=BEARER_SCHEME,
                     description="a token from api.tokens / MLOPS_API_TOKENS")


@dataclass(frozen=True)
class Principal:
    role: str
    fingerprint: str

    @property
    def who(self) -> str:
        return f"{self.role}:{self.fingerprint}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, tokens: dict[str, str], token_hashes: dict[str, str] | None = None):
        self._roles = {**(token_hashes or {}), **{_digest(t): role for t, role in tokens.items()}}

    @classmethod
    def from_settings(cls, settings) -> "Authenticator":
        return cls(dict(settings.api.tokens), dict(settings.api.token_hashes))

    def principal(self, authorization: str | None) -> Principal | None:
        """The caller of an ``Authorization`` header, or None when it names no valid token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = _digest(token.strip())
        role = self._roles.get(digest)
        return Principal(role, digest[:10]) if role else None

    def check(self, authorization: str | None, least: str) -> Principal:
        """The caller if its role is at least ``least``; else 401 (who?) or 403 (not allowed)."""
        who = self.principal(authorization)
        if who is None:
            detail = ("missing or unknown bearer token" if self._roles else
                      "no API tokens are configured (set MLOPS_API_TOKENS=role:token,...)")
            raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
        if ROLE_RANK[who.role] < ROLE_RANK[least]:
            raise HTTPException(403, f"role {who.role!r} may not do this; it needs {least!r} "
                                     "or above")
        return who

    def dependency(self, least: str, audit: "AuditLog | None" = None):
        """A FastAPI dependency; with ``audit``, refusals are written to the audit log."""
        async def require(request: Request, _declared=Security(_bearer)) -> Principal:
            try:
                return self.check(request.headers.get("authorization"), least)
            except HTTPException as exc:
                if audit is not None:
                    who = self.principal(request.headers.get("authorization"))
                    audit.write(who.who if who else "anonymous", request.method,
                                request.url.path, f"refused: {exc.status_code}", exc.detail)
                raise
        require.__name__ = f"require_{least}"
        return require


def hashed_token_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for an actor or replica: ``MLOPS_API_TOKENS`` replaced by
    ``MLOPS_API_TOKEN_HASHES`` (role:sha256 of each token), so the tokens themselves
    never travel in a Ray runtime environment (visible in the dashboard and to every
    worker); the Authenticator there checks callers against the hashes alone."""
    from cluster.config import parse_tokens
    out = {k: v for k, v in env.items() if k != "MLOPS_API_TOKENS"}
    raw = env.get("MLOPS_API_TOKENS")
    if raw:
        hashed = [f"{role}:{_digest(token)}" for token, role in parse_tokens(raw).items()]
        if out.get("MLOPS_API_TOKEN_HASHES"):
            hashed.insert(0, out["MLOPS_API_TOKEN_HASHES"])
        out["MLOPS_API_TOKEN_HASHES"] = ",".join(hashed)
    return out


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "AuditLog":
        return cls(Path(settings.home) / "audit" / "api.jsonl")

    def write(self, who: str, method: str, target: str, result: str, detail=None) -> dict:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "who": who, "action": f"{method} {target}", "result": result}
        if detail is not None:
            record["detail"] = detail
        line = (json.dumps(record, default=str) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return record

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def tail(self, limit: int = 100, chunk: int = 65536) -> list[dict]:
        """The last ``limit`` records, oldest first, reading only the end of the file
        (the log only grows: day 250 costs what day 1 did)."""
        if limit <= 0 or not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            data, pos = b"", end
            while pos > 0 and data.count(b"\n") <= limit:
                step = min(chunk, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
        lines = [ln for ln in data.split(b"\n") if ln.strip()]
        if pos > 0:
            lines = lines[1:]          # the first one may be cut
        return [json.loads(ln) for ln in lines[-limit:]]
