// The tab as a SWIM member (docs/protocol.md, "Membership (SWIM)"): the peers that use it
// probe its liveness like any node's, so it must answer, or they declare it dead and drop
// it (its node drops the link, and with it the relay slot). The tab probes no one: it uses
// only its node, whose link tells it all it needs. It answers a ping with an ack; a
// ping_req with a nack, as the spec lets a helper without a link to the target do.

import { MAX_SWIM_FRAME, SwimAck, SwimNack, SwimRequest, decodeWith } from "./spec/index.js";

const REQUEST_WAIT_MS = 5_000; // as a native node waits for the request frame
const MAX_INCARNATION = 2n ** 63n; // the spec's bound: incarnations stay below it

export class SwimMember {
  constructor(peerId) {
    this.peerId = peerId;
    // A restarted tab outranks news about its previous life (the spec's rule).
    this.incarnation = Math.floor(Date.now() / 1000);
    this.refuted = null; // the "alive" news spread after others suspected this tab
    this.answered = 0;
  }

  /** One exchange on `framed`; a late, malformed or oversized request resets the stream. */
  async answer(framed) {
    let request;
    try {
      const payload = await framed.receivePayload(REQUEST_WAIT_MS);
      if (payload === null) return;
      if (payload.length > MAX_SWIM_FRAME) throw new Error("an oversized frame");
      request = decodeWith(SwimRequest, payload);
    } catch {
      framed.abort("no valid swim request in time"); // the protocol: a reset, no answer
      return;
    }
    const answer =
      request.kind === "swim_ping"
        ? SwimAck.write({ probe_id: request.probe_id, incarnation: this.#heard(request.news), news: this.#news() })
        : SwimNack.write({ probe_id: request.probe_id });
    this.answered += 1;
    await framed.send(answer);
    await framed.close();
  }

  /** Our incarnation after `news`: raised above any that says we are suspect or dead
   * (kept exact past 2^53 as a BigInt, and below the spec's 2^63). */
  #heard(news) {
    for (const item of news) {
      if (item.peer_id !== this.peerId || item.state === "alive") continue;
      if (BigInt(item.incarnation) >= BigInt(this.incarnation)) {
        const next = BigInt(item.incarnation) + 1n;
        const kept = next < MAX_INCARNATION ? next : MAX_INCARNATION - 1n;
        this.incarnation = kept <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(kept) : kept;
        this.refuted = { peer_id: this.peerId, state: "alive", incarnation: this.incarnation };
      }
    }
    return this.incarnation;
  }

  #news() {
    return this.refuted ? [this.refuted] : [];
  }
}
