// The framing code against the spec's byte-exact vectors (docs/vectors/framing.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { FrameReader, FramingError, MAX_FRAME, encodeFrame } from "../src/framing.js";

const vectors = JSON.parse(
  readFileSync(new URL("../../docs/vectors/framing.json", import.meta.url), "utf8"),
);
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const bytes = (text) => new Uint8Array(Buffer.from(text, "hex"));

// A source that yields `data` in pieces of `size` bytes (1: every boundary is crossed).
async function* pieces(data, size) {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

async function readAll(data, size) {
  const reader = new FrameReader(pieces(data, size));
  const frames = [];
  try {
    for (let payload; (payload = await reader.read()) !== null; ) frames.push(hex(payload));
  } catch (error) {
    assert.ok(error instanceof FramingError, `unexpected ${error}`);
    return { frames, then: error.code };
  }
  return { frames, then: "end" };
}

test("the cap is the spec's", () => {
  assert.equal(MAX_FRAME, vectors.max_frame);
});

test("payloads encode to the spec's frames", () => {
  for (const { payload_hex, frame_hex } of vectors.frames) {
    assert.equal(hex(encodeFrame(bytes(payload_hex))), frame_hex);
  }
});

test("a payload over the cap is not encoded", () => {
  assert.throws(() => encodeFrame(new Uint8Array(MAX_FRAME + 1)), FramingError);
  assert.equal(encodeFrame(new Uint8Array(MAX_FRAME)).length, MAX_FRAME + 4);
});

for (const size of [1, 3, 1 << 16]) {
  test(`byte streams read as the spec says, in ${size}-byte pieces`, async () => {
    for (const stream of vectors.streams) {
      const got = await readAll(bytes(stream.bytes_hex), size);
      assert.deepEqual(got, { frames: stream.frames_hex, then: stream.then }, stream.bytes_hex);
    }
  });
}

test("Uint8ArrayList-like chunks are read too", async () => {
  const frame = encodeFrame(new TextEncoder().encode("{}"));
  async function* lists() {
    yield { subarray: () => frame };
  }
  assert.equal(hex(await new FrameReader(lists()).read()), hex(new TextEncoder().encode("{}")));
});
