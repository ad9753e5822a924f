// simplew.js: the browser client of the simplew.v1 protocol, one dependency-free
// ES module. Every simplew server with a WebSocket endpoint serves it at /simplew.js.
//
//   import { SimplewClient } from "/simplew.js";
//   const client = new SimplewClient();
//   client.addEventListener("pub", (e) => show(e.detail.offset, e.detail.data));
//   client.connect("/websocket");
//
// Events (CustomEvent, data in event.detail):
//   open       {session, epoch, offset, recovered, missed}  after every welcome
//   recovered  same, after "open", when a reconnection got back what it missed
//              (detail.missed pubs follow, then live ones)
//   reset      same, after "open", when a reconnection asked for recovery and
//              did not get it: the session, its rooms and the offsets are new
//   pub        {offset, room, data}  a multicast; data is a string, or a
//              Uint8Array for a binary one; room is null for "every client"
//   msg        {data}  a direct message (never recovered)
//   close      {code, reason, reconnecting}  a connection that had its welcome ended
//
// Guarantees: pubs arrive at most once and in increasing offset (a pub whose
// offset is not above the last one is dropped and counted in `duplicates`).
// After any close but close() the client reconnects after
// random(0, min(backoffMax, backoffMin * 2**attempt)) seconds and resumes with
// ?session=&epoch=&offset=. send() while disconnected throws NotConnectedError:
// nothing is queued. No history is kept in memory.

export const PROTOCOL = "simplew.v1";

export class NotConnectedError extends Error {
  constructor() {
    super("not connected: direct messages are not queued; send again after the next open event");
    this.name = "NotConnectedError";
  }
}

export function backoffDelay(attempt, backoffMin, backoffMax) {
  return Math.random() * Math.min(backoffMax, backoffMin * 2 ** Math.min(attempt, 62));
}

function decode(message) {
  if (typeof message.binary === "string") {
    const raw = atob(message.binary);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }
  if (typeof message.text !== "string") throw new TypeError("neither text nor binary");
  return message.text;
}

export class SimplewClient extends EventTarget {
  // options: backoffMin / backoffMax (seconds, 0.5 / 20), openTimeout (seconds
  // from the attempt to the welcome, 10), token (a JWT, or a function returning
  // the current one, offered as the "bearer" subprotocol).
  constructor(options = {}) {
    super();
    this.backoffMin = options.backoffMin ?? 0.5;
    this.backoffMax = options.backoffMax ?? 20;
    this.openTimeout = options.openTimeout ?? 10;
    this.token = options.token ?? null;
    this.url = null;
    this.session = null;
    this.epoch = null;
    this.offset = null;
    this.duplicates = 0;
    this.reconnects = 0;
    this.resets = 0;
    this._ws = null;
    this._welcomed = false;
    this._closing = false;
    this._attempt = 0;
    this._timer = null;
    this._opened = null;
  }

  get connected() {
    return this._ws !== null && this._welcomed && !this._closing;
  }

  // Connect to the WebSocket endpoint at url (ws://, wss:// or a path of this
  // page's server). The promise resolves with the first welcome; until then and
  // afterwards the client retries by itself until close().
  connect(url) {
    if (this.url !== null && !this._closing) throw new Error("the client is already connected");
    const target = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    if (target.protocol === "http:") target.protocol = "ws:";
    if (target.protocol === "https:") target.protocol = "wss:";
    this.url = target;
    this._closing = false;
    this._attempt = 0;
    const opened = new Promise((resolve) => { this._opened = resolve; });
    this._open();
    return opened;
  }

  // Send the envelope {"url": url, "body": body} (plus "jwt" if given).
  send(url, body = null, jwt = undefined) {
    const envelope = { url, body };
    if (jwt !== undefined) envelope.jwt = jwt;
    this.sendText(JSON.stringify(envelope));
  }

  // Send one raw TEXT message (for on_message endpoints).
  sendText(text) {
    if (!this.connected) throw new NotConnectedError();
    this._ws.send(text);
  }

  // Close with 1000 and stop reconnecting.
  close() {
    this._closing = true;
    clearTimeout(this._timer);
    const ws = this._ws;
    if (ws !== null && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }

  _resumeUrl() {
    const url = new URL(this.url);
    const resume = this.session !== null && this.offset !== null;
    for (const name of ["session", "epoch", "offset"]) url.searchParams.delete(name);
    if (resume) {
      url.searchParams.set("session", this.session);
      url.searchParams.set("epoch", this.epoch);
      url.searchParams.set("offset", String(this.offset));
    }
    return [url.href, resume];
  }

  _open() {
    const [href, askedRecovery] = this._resumeUrl();
    const protocols = [PROTOCOL];
    const token = typeof this.token === "function" ? this.token() : this.token;
    if (token) protocols.push("bearer", token);
    let ws;
    try {
      ws = new WebSocket(href, protocols);
    } catch (error) {
      this._retry();
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    this._askedRecovery = askedRecovery;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (this._ws === ws && !this._welcomed) ws.close(4000, "no welcome");
    }, this.openTimeout * 1000);
    ws.onmessage = (event) => { if (this._ws === ws) this._message(ws, event.data); };
    ws.onclose = (event) => { if (this._ws === ws) this._closed(event); };
    ws.onopen = () => {
      if (ws.protocol === PROTOCOL) return;
      console.warn(`simplew.js: ${href} did not select ${PROTOCOL}: a simplew server needs recovery=True`);
      ws.close(4000, "no " + PROTOCOL + " subprotocol");
    };
  }

  _closed(event) {
    clearTimeout(this._timer);
    const welcomed = this._welcomed;
    this._ws = null;
    this._welcomed = false;
    if (welcomed) {
      this._emit("close", { code: event.code, reason: event.reason, reconnecting: !this._closing });
    }
    if (!this._closing) this._retry();
  }

  _retry() {
    const delay = backoffDelay(this._attempt, this.backoffMin, this.backoffMax);
    this._attempt += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => { if (!this._closing) this._open(); }, delay * 1000);
  }

  _message(ws, data) {
    if (typeof data !== "string") return;         // binary frames are not simplew.v1
    let message;
    try {
      message = JSON.parse(data);
      if (message === null || typeof message !== "object") throw new TypeError("not an object");
      if (message.type === "welcome") this._welcome(message);
      else if (message.type === "pub" && this._welcomed) this._pub(message);
      else if (message.type === "msg" && this._welcomed) this._emit("msg", { data: decode(message) });
      // other types: ignored (forward compatibility)
    } catch (error) {
      console.warn("simplew.js: malformed message dropped:", error);
      if (!this._welcomed) ws.close(4000, "bad welcome");
    }
  }

  _welcome(message) {
    const { session, epoch, offset } = message;
    if (typeof session !== "string" || typeof epoch !== "string"
        || !Number.isInteger(offset) || offset < 0 || this._welcomed) {
      throw new TypeError("bad welcome");
    }
    const recovered = message.recovered === true;
    const detail = { session, epoch, offset, recovered, missed: recovered ? (message.missed ?? 0) : 0 };
    this.session = session;
    this.epoch = epoch;
    this.offset = offset;
    this._welcomed = true;
    this._attempt = 0;
    clearTimeout(this._timer);
    if (this._opened === null) this.reconnects += 1;
    this._emit("open", detail);
    if (this._opened !== null) {
      const resolve = this._opened;
      this._opened = null;
      resolve(detail);
    }
    if (this._askedRecovery) {
      if (recovered) this._emit("recovered", detail);
      else {
        this.resets += 1;
        this._emit("reset", detail);
      }
    }
  }

  _pub(message) {
    const offset = message.offset;
    if (!Number.isInteger(offset)) throw new TypeError("pub offset is not an integer");
    if (this.offset !== null && offset <= this.offset) {
      this.duplicates += 1;
      return;
    }
    const data = decode(message);
    this.offset = offset;
    this._emit("pub", { offset, room: typeof message.room === "string" ? message.room : null, data });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
