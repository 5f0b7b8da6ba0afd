// From token bytes to token frames (docs/protocol.md, "The answer's text"): one
// incremental UTF-8 decoder for the whole completion, and stop strings held back.
//
// A character split across tokens appears in the frame of the token that completes it
// (earlier frames carry ""). Invalid bytes are dropped (the reference decodes with
// Python's errors="ignore"; TextDecoder would write U+FFFD instead, hence Utf8Decoder).
// A frame whose text might begin a stop string is held back until later tokens decide;
// frames are released in order, each with its own text.

/** An incremental UTF-8 decoder that drops invalid bytes (the WHATWG algorithm, which
 * resynchronises where Python's decoder does: after each maximal invalid subpart). */
export class Utf8Decoder {
  #need = 0;
  #point = 0;
  #lower = 0x80;
  #upper = 0xbf;

  /** The text the bytes complete; `final` drops an unfinished character at the end. */
  decode(bytes, final = false) {
    let out = "";
    for (let i = 0; i < bytes.length; i++) {
      const byte = bytes[i];
      if (this.#need > 0) {
        if (byte >= this.#lower && byte <= this.#upper) {
          this.#point = (this.#point << 6) | (byte & 0x3f);
          this.#lower = 0x80;
          this.#upper = 0xbf;
          if (--this.#need === 0) out += String.fromCodePoint(this.#point);
          continue;
        }
        this.#need = 0; // the sequence so far is invalid: drop it and read this byte afresh
        this.#lower = 0x80;
        this.#upper = 0xbf;
      }
      if (byte < 0x80) out += String.fromCharCode(byte);
      else if (byte >= 0xc2 && byte <= 0xdf) this.#start(1, byte & 0x1f);
      else if (byte >= 0xe0 && byte <= 0xef) {
        this.#start(2, byte & 0x0f);
        if (byte === 0xe0) this.#lower = 0xa0; // no overlong forms
        if (byte === 0xed) this.#upper = 0x9f; // no surrogates
      } else if (byte >= 0xf0 && byte <= 0xf4) {
        this.#start(3, byte & 0x07);
        if (byte === 0xf0) this.#lower = 0x90;
        if (byte === 0xf4) this.#upper = 0x8f; // nothing past U+10FFFF
      } // any other byte is invalid on its own: dropped
    }
    if (final) this.#need = 0;
    return out;
  }

  #start(need, bits) {
    this.#need = need;
    this.#point = bits;
  }
}

/** Turns (index, token id, bytes) into token frames {index, token_id, text}, holding back possible stops. */
export class CompletionText {
  #stops;
  #longestStop;
  #decoder = new Utf8Decoder();
  #text = ""; // all completion text so far, prefix included (offsets in UTF-16 units)
  #released = 0; // text before this offset has been sent (or was a prefix)
  #pending = []; // {index, token_id, start, end}

  constructor(stops = []) {
    this.#stops = stops.filter((s) => s.length > 0);
    this.#longestStop = Math.max(0, ...this.#stops.map((s) => s.length));
  }

  get text() {
    return this.#text;
  }

  /** A prefix token produced elsewhere (failover): it moves the decoder, and sends nothing. */
  prime(bytes) {
    this.#text += this.#decoder.decode(bytes);
    this.#released = this.#text.length;
  }

  /** One generated token: the frames now safe to send, and whether a stop string ended the
   * completion (then push no more tokens). */
  push(index, tokenId, bytes) {
    const start = this.#text.length;
    this.#text += this.#decoder.decode(bytes);
    this.#pending.push({ index, token_id: tokenId, start, end: this.#text.length });
    if (this.#stops.length === 0) return { frames: this.#release(this.#text.length), stopped: false };
    const stopAt = this.#findStop(start);
    if (stopAt !== null) {
      const frames = this.#release(stopAt, true);
      this.#pending = [];
      return { frames, stopped: true };
    }
    return { frames: this.#release(this.#text.length - this.#stopPrefixLength()), stopped: false };
  }

  /** The frames still held back, at the end of the completion. */
  finish() {
    this.#text += this.#decoder.decode(new Uint8Array(0), true);
    if (this.#pending.length) this.#pending.at(-1).end = this.#text.length;
    return this.#release(this.#text.length);
  }

  #findStop(newFrom) {
    const from = Math.max(0, newFrom - this.#longestStop + 1);
    const hits = this.#stops.map((s) => this.#text.indexOf(s, from)).filter((at) => at >= 0);
    return hits.length ? Math.min(...hits) : null;
  }

  /** The length of the longest tail of the text that could begin a stop string. */
  #stopPrefixLength() {
    let best = 0;
    for (const stop of this.#stops) {
      for (let size = Math.min(stop.length - 1, this.#text.length); size > best; size--) {
        if (this.#text.endsWith(stop.slice(0, size))) {
          best = size;
          break;
        }
      }
    }
    return best;
  }

  /** Send pending frames, in order, whose text lies before `safeEnd`; with `clip`, the frame
   * straddling it (where a stop string begins) is cut there. */
  #release(safeEnd, clip = false) {
    const frames = [];
    let taken = 0;
    for (const pending of this.#pending) {
      if (pending.end > safeEnd && !(clip && pending.start < safeEnd)) break;
      const end = Math.min(pending.end, safeEnd);
      const text = this.#text.slice(Math.max(pending.start, this.#released), end);
      frames.push({ index: pending.index, token_id: pending.token_id, text });
      this.#released = Math.max(this.#released, end);
      taken++;
    }
    this.#pending.splice(0, taken);
    return frames;
  }
}
