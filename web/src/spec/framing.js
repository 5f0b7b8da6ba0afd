// Frames (docs/protocol.md, "Frames"): a 4-byte unsigned big-endian length, then that many
// payload bytes, at most 1 MiB. A stream that ends between frames ends cleanly; inside
// one, it is truncated.

export const MAX_FRAME = 1 << 20;

export class FrameTooLarge extends Error {
  name = "FrameTooLarge";
  code = "too_large";
}

export class TruncatedFrame extends Error {
  name = "TruncatedFrame";
}

/** The frame of one payload (bytes, or text written as UTF-8). */
export function encodeFrame(payload) {
  const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  if (bytes.length > MAX_FRAME) throw new FrameTooLarge(`a payload of ${bytes.length} bytes`);
  const frame = new Uint8Array(4 + bytes.length);
  new DataView(frame.buffer).setUint32(0, bytes.length);
  frame.set(bytes, 4);
  return frame;
}

/** Reads frames out of byte chunks as they arrive: `push(chunk)` returns the payloads it
 * completes; `end()` throws TruncatedFrame if the stream stopped inside a frame. */
export class FrameReader {
  #buffer = new Uint8Array(0);

  constructor(maxSize = MAX_FRAME) {
    this.maxSize = maxSize;
  }

  push(chunk) {
    const joined = new Uint8Array(this.#buffer.length + chunk.length);
    joined.set(this.#buffer);
    joined.set(chunk, this.#buffer.length);
    const payloads = [];
    let at = 0;
    while (joined.length - at >= 4) {
      const size = new DataView(joined.buffer, at, 4).getUint32(0);
      if (size > this.maxSize) throw new FrameTooLarge(`a frame of ${size} bytes, above ${this.maxSize}`);
      if (joined.length - at - 4 < size) break;
      payloads.push(joined.slice(at + 4, at + 4 + size));
      at += 4 + size;
    }
    this.#buffer = joined.slice(at);
    return payloads;
  }

  end() {
    if (this.#buffer.length) throw new TruncatedFrame(`the stream ended inside a frame (${this.#buffer.length} bytes)`);
  }
}
