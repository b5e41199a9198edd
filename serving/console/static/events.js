// The event stream (/ws/events): the session's token as the first frame, resumed
// after the last offset seen when the connection drops, so no event is lost or
// shown twice across a reconnect.
import { session, toLogin } from "./api.js";

export class EventStream {
  constructor({ types = [], model = null, runId = null, after = null, onEvent, onState } = {}) {
    this.types = types;
    this.model = model;
    this.runId = runId;
    this.after = after;          // null: only events published after subscribing
    this.onEvent = onEvent || (() => {});
    this.onState = onState || (() => {});
    this.handlers = new Map();
    this.delay = 500;
    this.closed = false;
    this.connect();
  }

  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
    return this;
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws/events`);
    this.ws = ws;
    ws.onopen = () => {
      const hello = { token: session()?.token, types: this.types,
                      after: this.after === null ? "latest" : this.after };
      if (this.model) hello.model = this.model;
      if (this.runId) hello.run_id = this.runId;
      ws.send(JSON.stringify(hello));
      this.delay = 500;
      this.onState("open");
    };
    ws.onmessage = (msg) => {
      let frame;
      try { frame = JSON.parse(msg.data); } catch { return; }
      // the server confirms a subscription with its first frame: from here on nothing
      // published is missed (the browser tests wait for this mark)
      document.body.dataset.stream = "live";
      const event = frame.event || frame;
      if (frame.offset !== undefined && frame.offset !== null) {
        if (this.after !== null && frame.offset <= this.after) return;   // already shown
        this.after = frame.offset;
      }
      if (!event.type) { this.onState(frame.heartbeat ? "heartbeat" : "info", frame); return; }
      this.onEvent(event, frame.offset);
      for (const h of this.handlers.get(event.type) || []) h(event, frame.offset);
      for (const h of this.handlers.get("*") || []) h(event, frame.offset);
    };
    ws.onclose = (ev) => {
      this.onState("closed", ev);
      if (ev.code === 4401) { toLogin(); return; }
      if (this.closed || ev.code === 4403) return;
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10_000);
    };
  }

  close() {
    this.closed = true;
    this.ws?.close();
  }
}
