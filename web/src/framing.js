// dinet frames (docs/protocol.md, "Frames"): a 4-byte big-endian length, then that many
// payload bytes, at most 1 MiB. A reader tells a clean end between frames from a stream
// cut inside one, because a killed peer looks like a clean close.

export const MAX_FRAME = 1 << 20;

export class FramingError extends Error {
  /** @param {"truncated" | "too_large"} code */
  constructor(code, message) {
    super(message);
    this.name = "FramingError";
    this.code = code;
  }
}

/** The frame of `payload` (bytes). */
export function encodeFrame(payload) {
  if (payload.length > MAX_FRAME) {
    throw new FramingError("too_large", `a ${payload.length}-byte payload is over ${MAX_FRAME}`);
  }
  const frame = new Uint8Array(4 + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length, false);
  frame.set(payload, 4);
  return frame;
}

/** The frame of one JSON message. */
export function encodeJson(message) {
  return encodeFrame(new TextEncoder().encode(JSON.stringify(message)));
}

/**
 * Reads frames from `source`, an async iterable of byte chunks (a js-libp2p stream yields
 * Uint8Array or Uint8ArrayList). `read()` gives the next payload, or null at a clean end;
 * it throws FramingError("truncated") inside a frame and ("too_large") past `maxFrame`,
 * having read no further than the header.
 */
export class FrameReader {
  constructor(source, maxFrame = MAX_FRAME) {
    this._chunks = source[Symbol.asyncIterator]();
    this._buffer = new Uint8Array(0);
    this._ended = false;
    this.maxFrame = maxFrame;
  }

  async read() {
    if (!(await this._fill(4))) {
      if (this._buffer.length === 0) return null;
      throw new FramingError("truncated", `the stream ended inside a frame header`);
    }
    const length = new DataView(this._buffer.buffer, this._buffer.byteOffset, 4).getUint32(0, false);
    if (length > this.maxFrame) {
      throw new FramingError("too_large", `a ${length}-byte frame is over ${this.maxFrame}`);
    }
    if (!(await this._fill(4 + length))) {
      throw new FramingError("truncated", `the stream ended inside a ${length}-byte frame`);
    }
    const payload = this._buffer.slice(4, 4 + length);
    this._buffer = this._buffer.subarray(4 + length);
    return payload;
  }

  /** The next payload as JSON (null at a clean end). */
  async readJson() {
    const payload = await this.read();
    return payload === null ? null : JSON.parse(new TextDecoder().decode(payload));
  }

  // Whether `n` bytes are buffered, reading more until then (false: the stream ended first).
  async _fill(n) {
    while (this._buffer.length < n) {
      if (this._ended) return false;
      const { value, done } = await this._chunks.next();
      if (done) {
        this._ended = true;
        return false;
      }
      const chunk = value instanceof Uint8Array ? value : value.subarray();
      const joined = new Uint8Array(this._buffer.length + chunk.length);
      joined.set(this._buffer, 0);
      joined.set(chunk, this._buffer.length);
      this._buffer = joined;
    }
    return true;
  }
}
