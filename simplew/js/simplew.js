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
// ?session=&epoch=&offset=; attempt counts the attempts since the last
// connection that stayed up 1 s past its welcome (a server that welcomes and
// closes at once sees the waits double). send() while disconnected throws
// NotConnectedError: nothing is queued. No history is kept in memory.
//
// Every server message is checked against simplew.v1 (docs/protocol.md, 5.3):
// a JSON object with a string type; a welcome's session of 16 to 64 and epoch
// of 1 to 64 characters of A-Z a-z 0-9 _ -, offset and missed integers from 0
// (safe integers: a JS number holds no larger one exactly), recovered a boolean
// (true only for the session, epoch and offset asked for; missed 0 otherwise);
// a pub's offset from 1, room null or a string; exactly one of text (a string
// without lone surrogates) and binary (standard base64 with padding); a first
// message that is a welcome, no second one, no binary frame. Unknown types and
// fields are ignored. A violation closes the connection with 4002 (browsers may
// not send 1002) and a console warning; before the welcome the attempt is
// retried with backoff, after it the close event has code 1002 and the reason
// "protocol error: ...", nothing of the message is applied, and the client
// reconnects with backoff.

export const PROTOCOL = "simplew.v1";
// the limits the server puts on the resume parameters (simplew/recovery.py)
const SESSION_ID = /^[A-Za-z0-9_-]{16,64}$/;
const EPOCH = /^[A-Za-z0-9_-]{1,64}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;  // and a length that is a multiple of 4
const STABLE_AFTER = 1000;  // ms a connection must stay up past its welcome to reset the backoff
const VIOLATION = 4002;  // the close code sent for a protocol error (1002 is not allowed)

export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProtocolError";
  }
}

export class NotConnectedError extends Error {
  constructor() {
    super("not connected: direct messages are not queued; send again after the next open event");
    this.name = "NotConnectedError";
  }
}

export function backoffDelay(attempt, backoffMin, backoffMax) {
  return Math.random() * Math.min(backoffMax, backoffMin * 2 ** Math.min(attempt, 62));
}

const has = (message, name) => Object.prototype.hasOwnProperty.call(message, name);

function string(value, name) {
  if (typeof value !== "string") throw new ProtocolError(`${name} is not a string`);
  const wellFormed = typeof value.isWellFormed === "function"
    ? value.isWellFormed() : !/[\uD800-\uDFFF]/u.test(value);
  if (!wellFormed) throw new ProtocolError(`${name} holds a lone surrogate`);
  return value;
}

function integer(message, name, low) {
  const value = message[name];
  if (!Number.isSafeInteger(value) || value < low) {
    throw new ProtocolError(`${name} is not an integer from ${low} to 2**53 - 1`);
  }
  return value;
}

function decode(message) {
  if (has(message, "text") === has(message, "binary")) {
    throw new ProtocolError("needs exactly one of text and binary");
  }
  if (has(message, "text")) return string(message.text, "text");
  const binary = message.binary;
  if (typeof binary !== "string" || binary.length % 4 !== 0 || !BASE64.test(binary)) {
    throw new ProtocolError("binary is not standard base64 with padding");
  }
  const raw = atob(binary);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

export class SimplewClient extends EventTarget {
  // options: backoffMin / backoffMax (seconds, 0.5 / 20), openTimeout (seconds
  // from the attempt to the welcome, 10), token (a JWT, or a function returning
  // the current one or a Promise of it, offered as the "bearer" subprotocol; when
  // the server says the connection's token expired ({"type":"refresh"}), the
  // function is called again and its token sent back).
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
    this._welcomedAt = 0;
    this._failure = null;  // [code, reason] of the current connection's protocol error
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
    let token;
    try {
      token = typeof this.token === "function" ? this.token() : this.token;
    } catch (error) {
      console.warn("simplew.js: the token function threw:", error);
      this._retry();
      return;
    }
    if (token && typeof token.then === "function") {
      token.then((value) => { if (!this._closing) this._connect(value); },
        (error) => { console.warn("simplew.js: the token promise failed:", error); this._retry(); });
      return;
    }
    this._connect(token);
  }

  _connect(token) {
    const [href, askedRecovery] = this._resumeUrl();
    const protocols = [PROTOCOL];
    if (typeof token === "string" && token) protocols.push("bearer", token);
    let ws;
    try {
      ws = new WebSocket(href, protocols);
    } catch (error) {
      this._retry();
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    this._failure = null;
    this._askedRecovery = askedRecovery;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (this._ws === ws && !this._welcomed) ws.close(4000, "no welcome");
    }, this.openTimeout * 1000);
    ws.onmessage = (event) => {
      if (this._ws === ws && this._failure === null) this._message(ws, event.data);
    };
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
    if (welcomed && performance.now() - this._welcomedAt >= STABLE_AFTER) this._attempt = 0;
    if (welcomed) {
      const [code, reason] = this._failure ?? [event.code, event.reason];
      this._emit("close", { code, reason, reconnecting: !this._closing });
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
    try {
      if (typeof data !== "string") throw new ProtocolError("a binary frame (simplew.v1 is TEXT only)");
      let message;
      try {
        message = JSON.parse(data);
      } catch (error) {
        throw new ProtocolError(`not JSON (${error.name})`);
      }
      if (message === null || typeof message !== "object" || Array.isArray(message)) {
        throw new ProtocolError("not a JSON object");
      }
      const type = message.type;
      if (typeof type !== "string") throw new ProtocolError("no string type");
      if (!this._welcomed) {
        if (type !== "welcome") throw new ProtocolError("the first message is not a welcome");
        this._welcome(message);
      } else if (type === "pub") this._pub(message);
      else if (type === "msg") this._emit("msg", { data: decode(message) });
      else if (type === "welcome") throw new ProtocolError("a second welcome on one connection");
      else if (type === "refresh") this._refresh(ws);
      // other types: ignored (forward compatibility)
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      console.warn("simplew.js: protocol error, closing:", error.message);
      this._failure = [1002, "protocol error: " + error.message];
      ws.close(VIOLATION, "protocol error");
    }
  }

  _welcome(message) {
    const { session, epoch, recovered } = message;
    if (typeof session !== "string" || !SESSION_ID.test(session)) {
      throw new ProtocolError("session is not 16 to 64 characters of A-Z a-z 0-9 _ -");
    }
    if (typeof epoch !== "string" || !EPOCH.test(epoch)) {
      throw new ProtocolError("epoch is not 1 to 64 characters of A-Z a-z 0-9 _ -");
    }
    const offset = integer(message, "offset", 0);
    if (typeof recovered !== "boolean") throw new ProtocolError("recovered is not a boolean");
    const missed = integer(message, "missed", 0);
    if (recovered) {
      if (!this._askedRecovery || session !== this.session || epoch !== this.epoch
          || offset !== this.offset) {
        throw new ProtocolError("recovered a session, epoch or offset it was not asked for");
      }
    } else if (missed !== 0) throw new ProtocolError("missed is not 0 in a fresh session");
    let left = [];
    if (has(message, "left")) {
      if (!recovered || !Array.isArray(message.left)) {
        throw new ProtocolError("left is not a list of rooms of a recovered session");
      }
      left = message.left.map((room) => string(room, "left"));
    }
    const detail = { session, epoch, offset, recovered, missed, left };
    this.session = session;
    this.epoch = epoch;
    this.offset = offset;
    this._welcomed = true;
    this._welcomedAt = performance.now();
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

  // The server asks for a new token: send what the token function gives now (a
  // fixed token cannot be refreshed: the server then closes with 4001).
  _refresh(ws) {
    if (typeof this.token !== "function") return;
    Promise.resolve()
      .then(() => this.token())
      .then((token) => {
        if (typeof token === "string" && token && this._ws === ws && ws.readyState === WebSocket.OPEN) {
          ws.send(JSON.stringify({ type: "refresh", token }));
        }
      }, (error) => console.warn("simplew.js: the token function failed:", error));
  }

  _pub(message) {
    const offset = integer(message, "offset", 1);
    if (!has(message, "room")) throw new ProtocolError("pub has no room");
    const room = message.room === null ? null : string(message.room, "room");
    const data = decode(message);
    if (this.offset !== null && offset <= this.offset) {
      this.duplicates += 1;
      return;
    }
    this.offset = offset;
    this._emit("pub", { offset, room, data });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
