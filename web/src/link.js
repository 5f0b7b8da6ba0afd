// The tab's libp2p link to the network: a js-libp2p node (WebSockets, Noise, yamux,
// identify, circuit relay v2) that dials the gateway's node and holds a relay slot on it,
// so that other peers reach the tab through that node (`/p2p-circuit`).
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { circuitRelayTransport } from "@libp2p/circuit-relay-v2";
import { identify } from "@libp2p/identify";
import { webSockets } from "@libp2p/websockets";
import { multiaddr } from "@multiformats/multiaddr";
import { createLibp2p } from "libp2p";
import { FrameReader, encodeFrame } from "./spec/framing.js";

export const MANIFEST_PROTOCOL = "/dinet/manifest/1";
const DIAL_TIMEOUT_MS = 10_000;
const REPLY_TIMEOUT_MS = 10_000;

// Protocols the tab serves (protocol -> fn(FramedStream)), on every link, now and later.
const handlers = new Map();
const links = new Set();

/** A libp2p stream read and written in dinet frames (docs/protocol.md, "Frames"). */
export class FramedStream {
  #chunks;
  #reader = new FrameReader();
  #payloads = []; // whole frames read but not yet asked for

  constructor(stream, remotePeer) {
    this.stream = stream;
    this.remotePeer = remotePeer; // peer id string
    this.#chunks = stream[Symbol.asyncIterator]();
  }

  /** The next payload (bytes), or null at a clean end; TruncatedFrame or FrameTooLarge
   * (from spec/framing.js) otherwise; with `timeoutMs`, an Error when none came in time. */
  async receivePayload(timeoutMs = null) {
    const next = this.#next();
    return timeoutMs === null ? next : withTimeout(next, timeoutMs, `no frame within ${timeoutMs} ms`);
  }

  /** The next message (parsed JSON), or null at a clean end. */
  async receive(timeoutMs = null) {
    const payload = await this.receivePayload(timeoutMs);
    return payload === null ? null : JSON.parse(new TextDecoder().decode(payload));
  }

  async #next() {
    while (this.#payloads.length === 0) {
      const { value, done } = await this.#chunks.next();
      if (done) {
        this.#reader.end(); // throws inside a frame: a killed peer looks like a clean close
        return null;
      }
      this.#payloads.push(...this.#reader.push(value instanceof Uint8Array ? value : value.subarray()));
    }
    return this.#payloads.shift();
  }

  /** One frame: `message` is JSON text (the spec's frame builders give it) or an object. */
  async send(message) {
    const text = typeof message === "string" ? message : JSON.stringify(message);
    await this.sendFrame(encodeFrame(new TextEncoder().encode(text)));
  }

  async sendFrame(frame) {
    if (!this.stream.send(frame)) await this.stream.onDrain();
  }

  /** "I will write no more" (the other side may still write). */
  close() {
    return this.stream.close();
  }

  /** Abort both directions (a yamux reset). */
  abort(why = "aborted") {
    this.stream.abort(why instanceof Error ? why : new Error(why));
  }
}

/**
 * Serve `protocol`: each inbound stream goes to `fn(framed)` (a FramedStream). Streams
 * arrive over relayed connections too (other peers reach the tab only that way). A
 * handler that throws costs its own stream only.
 */
export async function registerHandler(protocol, fn) {
  handlers.set(protocol, fn);
  await Promise.all([...links].map((link) => link._serve(protocol, fn)));
}

/**
 * Connect the tab: a js-libp2p node with `privateKey` (a libp2p ed25519 PrivateKey) dials
 * the first of `addrs` (the node's /ws or /wss multiaddrs, each ending in /p2p/<its id>,
 * as GET /api/browser gives them) that answers and, with `reserve`, reserves a relay slot
 * on it. Resolves to a Link.
 */
export async function openLink({ privateKey, addrs, reserve = true, timeoutMs = DIAL_TIMEOUT_MS }) {
  if (!addrs?.length) throw new Error("no address to dial: the node listens on no /ws or /wss address");
  let lastError;
  for (const addr of addrs) {
    const link = new Link(addr);
    try {
      await link._start(privateKey, reserve, timeoutMs);
      return link;
    } catch (error) {
      lastError = error;
      await link.close();
    }
  }
  throw lastError;
}

export class Link {
  constructor(addr) {
    this.addr = multiaddr(addr);
    this.nodePeerId = this.addr.getComponents().findLast((c) => c.name === "p2p")?.value;
    if (!this.nodePeerId) throw new Error(`${addr} does not end in /p2p/<peer id>`);
    this.libp2p = null;
  }

  async _start(privateKey, reserve, timeoutMs) {
    this.libp2p = await this._create(privateKey, reserve);
    links.add(this);
    // Served before the node starts: a peer may open a stream as soon as the slot is held.
    for (const [protocol, fn] of handlers) await this._serve(protocol, fn);
    try {
      await this.libp2p.start();
    } catch (error) {
      if (!reserve) throw error;
      throw new Error(`${this.addr} gives this tab no relay slot: ${error.message}`, { cause: error });
    }
    await this.libp2p.dial(this.addr, { signal: AbortSignal.timeout(timeoutMs) });
  }

  _create(privateKey, reserve) {
    return createLibp2p({
      start: false,
      privateKey,
      // Listening on "<node>/p2p-circuit" dials the node and reserves a slot there at start.
      addresses: { listen: reserve ? [`${this.addr.toString()}/p2p-circuit`] : [] },
      transports: [webSockets(), circuitRelayTransport()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      // A browser's default gater refuses ws:// and private addresses: the gateway's own
      // node is often exactly that (a LAN, a laptop, loopback in the tests).
      connectionGater: { denyDialMultiaddr: () => false },
      services: { identify: identify() },
    });
  }

  /** The tab's own peer id. */
  get peerId() {
    return this.libp2p.peerId.toString();
  }

  /** Where other peers reach the tab: circuits through the node (empty without a reservation). */
  circuitAddrs() {
    return this.libp2p
      .getMultiaddrs()
      .map((ma) => ma.toString())
      .filter((ma) => ma.includes("/p2p-circuit"));
  }

  /** Whether the tab is connected to its node now. */
  connected() {
    return this.libp2p.getConnections().some((c) => c.remotePeer.toString() === this.nodePeerId);
  }

  /** A new framed stream of `protocol` to the node (or to `peer`, a peer id string). */
  async openStream(protocol, { peer, timeoutMs = DIAL_TIMEOUT_MS } = {}) {
    const target = peer ?? this.nodePeerId;
    const to = target === this.nodePeerId ? this.addr : multiaddr(`/p2p/${target}`);
    const stream = await this.libp2p.dialProtocol(to, protocol, {
      signal: AbortSignal.timeout(timeoutMs),
      runOnLimitedConnection: true,
    });
    return new FramedStream(stream, target);
  }

  /**
   * `/dinet/manifest/1`: the signed manifests the node gives (its own first), as sent,
   * unverified. `query` overrides the defaults (include_known, model_id, model_hash, limit).
   */
  async queryManifests(query = {}, { timeoutMs = REPLY_TIMEOUT_MS } = {}) {
    const framed = await this.openStream(MANIFEST_PROTOCOL, { timeoutMs });
    try {
      await framed.send({
        kind: "manifest_query",
        include_known: true,
        model_id: null,
        model_hash: null,
        limit: 32,
        ...query,
      });
      const reply = await withTimeout(framed.receive(), timeoutMs, "no manifests in time");
      if (reply?.kind !== "manifests" || !Array.isArray(reply.manifests)) {
        throw new Error(`the node answered ${JSON.stringify(reply)?.slice(0, 200)}, not manifests`);
      }
      await framed.close();
      return reply.manifests;
    } catch (error) {
      framed.abort(error);
      throw error;
    }
  }

  async _serve(protocol, fn) {
    await this.libp2p.unhandle(protocol);
    await this.libp2p.handle(
      protocol,
      async (stream, connection) => {
        const framed = new FramedStream(stream, connection.remotePeer.toString());
        try {
          await fn(framed);
        } catch (error) {
          console.warn(`the ${protocol} handler failed; its stream is aborted`, error);
          framed.abort(error);
        }
      },
      { runOnLimitedConnection: true },
    );
  }

  async close() {
    links.delete(this);
    await this.libp2p?.stop();
  }
}

function withTimeout(promise, ms, message) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
