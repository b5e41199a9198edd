"""``/ws/events``: the event bus over a WebSocket, filtered, authenticated, resumable.

The client's first frame subscribes (a browser cannot set headers on a WebSocket, so
the token may travel in it; never in the URL, which lands in logs)::

    {"token": "...", "after": -1, "types": ["training_progress"], "model": "stock-lightgbm",
     "run_id": "..."}

``token`` may be left out when the upgrade request carried ``Authorization: Bearer``.
Every field but the token is optional. The server then sends, oldest first, every
persisted event with offset > ``after`` that matches, as
``{"offset": N, "event": {...}}``, and ``{"heartbeat": true, "offset": N}`` when idle
(also at once when the subscription has nothing to send yet: it confirms it):
``N`` is the offset to resume from after a reconnect (``after = N``): nothing is lost
and nothing repeated, because offsets are the events table's commit order.
``"after": "latest"`` starts after the newest event at subscription time (the console's
pages: only what happens while they are open).

``model`` matches an event's model type, registry name, model id (``name/version``),
a deployment's name or a version in its split. Closes: 4401 no or unknown token,
4403 role too low, 4422 a bad subscribe frame (the reason says which field).
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Annotated, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field, ValidationError

from cluster.events import EVENT_TYPES
from serving.context import ApiContext
from serving.errors import validation_items

POLL_S = 0.5
HEARTBEAT_S = 10.0
FIRST_FRAME_S = 30.0


class Subscribe(BaseModel):
    token: str | None = None
    # an offset, or "latest": only events published after the subscription (a page
    # that shows what happens from now on need not replay the whole history)
    after: Annotated[int, Field(ge=-1)] | Literal["latest"] = -1
    types: list[str] | None = None
    model: str | None = None
    run_id: str | None = None


def event_models(event) -> set[str]:
    """The model identifiers an event concerns (for the ``model`` filter)."""
    d = event.model_dump()
    out = {str(d[k]) for k in ("model", "name", "deployment") if d.get(k)}
    if d.get("name") and d.get("version"):
        out.add(f"{d['name']}/{d['version']}")
    for key in (d.get("split") or {}):
        out.add(key)
        out.add(key.rpartition("/")[0])
    return out


def matches(event, sub: Subscribe) -> bool:
    if sub.run_id is not None and getattr(event, "run_id", None) != sub.run_id:
        return False
    return sub.model is None or sub.model in event_models(event)


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter()

    @r.websocket("/ws/events")
    async def events(ws: WebSocket) -> None:
        await ws.accept()
        try:
            raw = await asyncio.wait_for(ws.receive_text(), FIRST_FRAME_S)
            sub = Subscribe.model_validate_json(raw)
        except asyncio.TimeoutError:
            await ws.close(4422, "no subscribe frame")
            return
        except WebSocketDisconnect:
            return
        except ValidationError as exc:
            items = validation_items(exc.errors(include_url=False))
            await ws.close(4422, json.dumps(items)[:120])
            return
        bad = [t for t in sub.types or [] if t not in EVENT_TYPES]
        if bad:
            await ws.close(4422, f"unknown type(s) {bad}"[:120])
            return
        header = ws.headers.get("authorization")
        who = ctx.auth.principal(f"Bearer {sub.token}" if sub.token else header)
        if who is None:
            await ws.close(4401, "missing or unknown bearer token")
            return
        if who.role not in ("viewer", "operator", "admin"):
            await ws.close(4403, "role may not read events")
            return
        await _stream(ws, ctx, sub)

    return r


async def _stream(ws: WebSocket, ctx: ApiContext, sub: Subscribe) -> None:
    bus = ctx.bus
    after = await asyncio.to_thread(bus.last_offset) if sub.after == "latest" else sub.after
    closed = asyncio.Event()

    async def watch() -> None:          # the client's frames: only a close matters
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        except Exception:
            pass
        closed.set()

    watcher = asyncio.create_task(watch())
    # -inf: with nothing to send at once, the first pass sends a heartbeat, so the
    # client knows it is subscribed (and from which offset) without waiting
    last_sent = -math.inf
    try:
        while not closed.is_set():
            found = await asyncio.to_thread(bus.read, after, sub.types)
            for offset, event in found:
                if matches(event, sub):
                    await ws.send_text(json.dumps({"offset": offset,
                                                   "event": json.loads(event.model_dump_json())}))
                    last_sent = time.monotonic()
                after = offset
            if time.monotonic() - last_sent > HEARTBEAT_S:
                await ws.send_text(json.dumps({"heartbeat": True, "offset": after}))
                last_sent = time.monotonic()
            try:
                await asyncio.wait_for(closed.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
    except (WebSocketDisconnect, RuntimeError):
        pass                            # the client went away mid-send
    finally:
        watcher.cancel()
