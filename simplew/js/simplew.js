// simplew.js: the browser client of the simplew.v2 protocol, one dependency-free
// ES module. Every simplew server with a WebSocket endpoint serves it at /simplew.js.
//
//   import { SimplewClient } from "/simplew.js";
//   const client = new SimplewClient();
//   client.addEventListener("pub", (e) => show(e.detail.room, e.detail.offset, e.detail.data));
//   client.addEventListener("roomreset", (e) => reload(e.detail.room));
//   client.connect("/websocket");
//
// Streams: every room has its own stream of pubs, and the multicasts to every
// client form one more, the broadcast stream (room null). The client holds a
// position {epoch, offset} per stream it is in (client.positions: the broadcast
// stream and every room the session is in) and sends them all back to resume.
//
// Events (CustomEvent, data in event.detail):
//   open       {session, epoch, offset, recovered, missed, left, streams}  after
//              every welcome; epoch and offset are the broadcast stream's, streams
//              is [{room, epoch, offset, recovered, missed}, ...] (the broadcast
//              stream first, then the session's rooms), left the rooms the session
//              is no longer in (a recovered welcome only)
//   recovered  same, after "open", when a reconnection resumed its session
//              (detail.missed pubs follow, then live ones); then a "roomreset" for
//              each stream of detail.streams that was not recovered and a "leave"
//              for each room of detail.left
//   reset      same, after "open", when a reconnection asked to resume and got
//              a fresh session: the session, its rooms and the positions are new
//   pub        {room, epoch, offset, data}  a multicast; data is a string, or a
//              Uint8Array for a binary one; room is null for "every client"
//   join       {room, epoch, offset}  the session is now in room (its pubs follow)
//   leave      {room}  the session is no longer in room
//   roomreset  {room, epoch, offset}  what the client held of that stream is lost
//              (the server lost pubs, or they are no longer in its history): reload
//              the room's state; the pubs after the new position follow
//   msg        {data}  a direct message (never recovered)
//   close      {code, reason, reconnecting}  a connection that had its welcome ended
//
// Guarantees: pubs arrive at most once and, per stream, in increasing offset (a
// pub of a stream the client does not hold, of another epoch than the one held,
// or whose offset is not above the one held is dropped and counted in
// `duplicates`). After any close but close() the client reconnects after
// random(0, min(backoffMax, backoffMin * 2**attempt)) seconds, to the URL with
// ?resume=1, and sends {"type":"resume","session":...,"streams":[[room, epoch,
// offset], ...]} as its first message (the session id never goes in the URL);
// attempt counts the attempts since the last connection that stayed up 1 s past
// its welcome (a server that welcomes and closes at once sees the waits double).
// send() while disconnected throws NotConnectedError: nothing is queued. No
// history is kept in memory.
//
// Every server message is checked against simplew.v2 (docs/protocol.md, 5.5): a
// JSON object with a string type; session of 16 to 64 and every epoch of 1 to 64
// characters of A-Z a-z 0-9 _ -; offsets and missed integers from 0 (safe
// integers: a JS number holds no larger one exactly; a pub's offset from 1);
// booleans that are booleans; a room null (pub, reset, the first streams entry:
// the broadcast stream) or a string of 1 to 255 UTF-8 bytes; a welcome's streams
// entries arrays of exactly [room, epoch, offset, recovered, missed], no stream
// twice, a recovered entry with the epoch and offset the client sent for it, an
// entry not recovered with missed 0, the welcome's missed their sum, recovered
// true only for the session asked for (missed 0 otherwise), left a list of rooms
// of a recovered welcome that the client sent and that are not in streams;
// exactly one of text (a string without lone surrogates) and binary (standard
// base64 with padding); a first message that is a welcome, no second one, no
// binary frame. Unknown types and fields are ignored. A violation closes the
// connection with 4002 (browsers may not send 1002) and a console warning; before
// the welcome the attempt is retried with backoff, after it the close event has
// code 1002 and the reason "protocol error: ...", nothing of the message is
// applied, and the client reconnects with backoff.

export const PROTOCOL = "simplew.v2";
// the forms of docs/protocol.md, 5.2 and 5.5
const SESSION_ID = /^[A-Za-z0-9_-]{16,64}$/;
const EPOCH = /^[A-Za-z0-9_-]{1,64}$/;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;  // and a length that is a multiple of 4
const ROOM_BYTES = 255;  // the longest room name, in UTF-8 bytes
const STABLE_AFTER = 1000;  // ms a connection must stay up past its welcome to reset the backoff
const VIOLATION = 4002;  // the close code sent for a protocol error (1002 is not allowed)
const utf8 = new TextEncoder();

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

function integer(value, name, low) {
  if (!Number.isSafeInteger(value) || value < low) {
    throw new ProtocolError(`${name} is not an integer from ${low} to 2**53 - 1`);
  }
  return value;
}

function boolean(value, name) {
  if (typeof value !== "boolean") throw new ProtocolError(`${name} is not a boolean`);
  return value;
}

function epochOf(value, name) {
  if (typeof value !== "string" || !EPOCH.test(value)) {
    throw new ProtocolError(`${name} is not 1 to 64 characters of A-Z a-z 0-9 _ -`);
  }
  return value;
}

// A room name: a string of 1 to 255 UTF-8 bytes, or null (the broadcast stream)
// where nullable. A UTF-16 unit is 1 to 3 bytes: only names of 86 to 255 units are
// encoded to be measured.
function roomOf(value, name, nullable) {
  if (value === null && nullable) return null;
  string(value, name);
  if (value.length === 0 || value.length > ROOM_BYTES
      || (value.length * 3 > ROOM_BYTES && utf8.encode(value).length > ROOM_BYTES)) {
    throw new ProtocolError(`${name} is not 1 to ${ROOM_BYTES} bytes of UTF-8`);
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

// The [room, epoch, offset, recovered, missed] entries of a welcome, checked: a
// Map room -> entry. sent is the Map of the positions the resume message sent
// (null for a connection that did not resume).
function welcomeStreams(streams, sent) {
  if (!Array.isArray(streams) || streams.length === 0) {
    throw new ProtocolError("streams is not a non-empty array");
  }
  const entries = new Map();
  for (let i = 0; i < streams.length; i++) {
    const entry = streams[i];
    const name = `streams[${i}]`;
    if (!Array.isArray(entry) || entry.length !== 5) {
      throw new ProtocolError(`${name} is not [room, epoch, offset, recovered, missed]`);
    }
    if (i === 0 && entry[0] !== null) {
      throw new ProtocolError("streams[0] is not the broadcast stream (room null)");
    }
    const room = i === 0 ? null : roomOf(entry[0], `${name} room`, false);
    const epoch = epochOf(entry[1], `${name} epoch`);
    const offset = integer(entry[2], `${name} offset`, 0);
    const recovered = boolean(entry[3], `${name} recovered`);
    const missed = integer(entry[4], `${name} missed`, 0);
    if (entries.has(room)) throw new ProtocolError(`${name} is a stream already given`);
    if (recovered) {
      const held = sent === null ? undefined : sent.get(room);
      if (held === undefined || held.epoch !== epoch || held.offset !== offset) {
        throw new ProtocolError(`${name} recovered a position the client did not send`);
      }
    } else if (missed !== 0) {
      throw new ProtocolError(`${name} is not recovered and has missed pubs`);
    }
    entries.set(room, { room, epoch, offset, recovered, missed });
  }
  return entries;
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
    this.duplicates = 0;
    this.reconnects = 0;
    this.resets = 0;
    this._positions = new Map();  // room (null: the broadcast stream) -> {epoch, offset}
    this._sent = null;  // the positions the current attempt's resume message sent
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

  // The broadcast stream's position (null before the first welcome).
  get epoch() {
    return this._positions.get(null)?.epoch ?? null;
  }

  get offset() {
    return this._positions.get(null)?.offset ?? null;
  }

  // A copy of the positions held: Map room (null for the broadcast stream) ->
  // {epoch, offset}, what the next resume sends.
  get positions() {
    const copy = new Map();
    for (const [room, { epoch, offset }] of this._positions) copy.set(room, { epoch, offset });
    return copy;
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
    // a client that has had a welcome resumes: ?resume=1, then the resume message
    const url = new URL(this.url);
    url.searchParams.delete("resume");
    const sent = this.session === null ? null : this.positions;
    let resume = null;
    if (sent !== null) {
      url.searchParams.set("resume", "1");
      const streams = [];
      for (const [room, { epoch, offset }] of sent) streams.push([room, epoch, offset]);
      resume = JSON.stringify({ type: "resume", session: this.session, streams });
    }
    const protocols = [PROTOCOL];
    if (typeof token === "string" && token) protocols.push("bearer", token);
    let ws;
    try {
      ws = new WebSocket(url.href, protocols);
    } catch (error) {
      this._retry();
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    this._failure = null;
    this._sent = sent;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (this._ws === ws && !this._welcomed) ws.close(4000, "no welcome");
    }, this.openTimeout * 1000);
    ws.onmessage = (event) => {
      if (this._ws === ws && this._failure === null) this._message(ws, event.data);
    };
    ws.onclose = (event) => { if (this._ws === ws) this._closed(event); };
    ws.onopen = () => {
      if (ws.protocol !== PROTOCOL) {
        console.warn(`simplew.js: ${url.href} did not select ${PROTOCOL}: a simplew server needs recovery=True`);
        ws.close(4000, "no " + PROTOCOL + " subprotocol");
        return;
      }
      if (resume !== null) ws.send(resume);  // the first message, before anything else
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
      if (typeof data !== "string") throw new ProtocolError("a binary frame (simplew.v2 is TEXT only)");
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
      else if (type === "join") this._join(message);
      else if (type === "leave") this._leave(message);
      else if (type === "reset") this._reset(message);
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
    const { session } = message;
    if (typeof session !== "string" || !SESSION_ID.test(session)) {
      throw new ProtocolError("session is not 16 to 64 characters of A-Z a-z 0-9 _ -");
    }
    const recovered = boolean(message.recovered, "recovered");
    const missed = integer(message.missed, "missed", 0);
    const entries = welcomeStreams(message.streams, this._sent);
    let sum = 0;
    for (const entry of entries.values()) sum += entry.missed;
    if (sum !== missed) throw new ProtocolError("missed is not the sum of the streams' missed");
    if (recovered) {
      if (this._sent === null || session !== this.session) {
        throw new ProtocolError("recovered a session it was not asked for");
      }
    } else if (missed !== 0) throw new ProtocolError("missed is not 0 in a fresh session");
    let left = [];
    if (has(message, "left")) {
      if (!recovered || !Array.isArray(message.left)) {
        throw new ProtocolError("left is not a list of rooms of a recovered session");
      }
      left = message.left.map((room) => roomOf(room, "left", false));
      for (const room of left) {
        if (!this._sent.has(room) || entries.has(room)) {
          throw new ProtocolError("left holds a room the client did not send or is still in");
        }
      }
    }
    const streams = [...entries.values()];
    const broadcast = streams[0];
    const detail = {
      session, epoch: broadcast.epoch, offset: broadcast.offset, recovered, missed, left, streams,
    };
    this.session = session;
    this._positions = new Map();
    for (const { room, epoch, offset } of streams) this._positions.set(room, { epoch, offset });
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
    if (this._sent === null) return;
    if (!recovered) {
      this.resets += 1;
      this._emit("reset", detail);
      return;
    }
    this._emit("recovered", detail);
    for (const { room, epoch, offset, recovered: continued } of streams) {
      if (!continued) this._emit("roomreset", { room, epoch, offset });
    }
    for (const room of left) this._emit("leave", { room });
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
    if (!has(message, "room")) throw new ProtocolError("pub has no room");
    const room = roomOf(message.room, "room", true);
    const epoch = epochOf(message.epoch, "epoch");
    const offset = integer(message.offset, "offset", 1);
    const data = decode(message);
    const held = this._positions.get(room);
    if (held === undefined || held.epoch !== epoch || offset <= held.offset) {
      this.duplicates += 1;
      return;
    }
    held.offset = offset;
    this._emit("pub", { room, epoch, offset, data });
  }

  _join(message) {
    const room = roomOf(message.room, "room", false);
    const epoch = epochOf(message.epoch, "epoch");
    const offset = integer(message.offset, "offset", 0);
    this._positions.set(room, { epoch, offset });
    this._emit("join", { room, epoch, offset });
  }

  _leave(message) {
    const room = roomOf(message.room, "room", false);
    this._positions.delete(room);
    this._emit("leave", { room });
  }

  // A stream that cannot be continued: hold its new position (a reset of a room
  // the client is not in changes nothing).
  _reset(message) {
    if (!has(message, "room")) throw new ProtocolError("reset has no room");
    const room = roomOf(message.room, "room", true);
    const epoch = epochOf(message.epoch, "epoch");
    const offset = integer(message.offset, "offset", 0);
    if (!this._positions.has(room)) return;
    this._positions.set(room, { epoch, offset });
    this._emit("roomreset", { room, epoch, offset });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
