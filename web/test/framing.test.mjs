// framing.json (payloads and byte streams; the shard tensors are not the browser's), and
// the node's reading of a request in the reference's order.
import assert from "node:assert/strict";
import { test } from "node:test";
import { FrameReader, FrameTooLarge, TruncatedFrame, encodeFrame } from "../src/spec/framing.js";
import { Refusal, admitRequest } from "../src/spec/infer.js";
import { fromHex, hex, vectors } from "../testing/vectors.mjs";

const F = vectors("framing");

test("framing.json: every payload's frame", () => {
  for (const f of F.frames) assert.equal(hex(encodeFrame(fromHex(f.payload_hex))), f.frame_hex);
});

test("framing.json: every byte stream, fed whole and byte by byte", () => {
  const outcome = { end: null, truncated: TruncatedFrame, too_large: FrameTooLarge };
  for (const s of F.streams) {
    for (const pieces of [[fromHex(s.bytes_hex)], Array.from(fromHex(s.bytes_hex), (b) => Uint8Array.of(b))]) {
      const reader = new FrameReader(F.max_frame);
      const frames = [];
      let error = null;
      try {
        for (const piece of pieces) frames.push(...reader.push(piece));
        reader.end();
      } catch (caught) {
        error = caught;
      }
      assert.deepEqual(frames.map(hex), s.frames_hex, s.bytes_hex);
      if (outcome[s.then] === null) assert.equal(error, null, s.bytes_hex);
      else assert.ok(error instanceof outcome[s.then], `${s.bytes_hex}: ${error}`);
    }
  }
});

const NODE = { modelId: "smollm2-135m-instruct", modelHash: "ab".repeat(32), maxTokens: 256, maxPromptChars: 100, nVocab: 1000 };
const request = (params, head = '"kind":"infer","request_id":"r1"') =>
  new TextEncoder().encode(`{${head},"params":${params}}`);

test("a node refuses a request with the code the reference node sends", () => {
  const refusals = [
    [request('{"prompt":"Hi"}'), { ...NODE, maxRequestBytes: 10 }, "too_large"],
    [request('{"prompt":"Hi","max_tokens":5.0}'), NODE, "bad_request"],
    [request('{"prompt":"Hi"}', `"request_id":"r1","model_hash":"${"cd".repeat(32)}"`), NODE, "unknown_model"],
    [request('{"prompt":"Hi"}', '"request_id":"r1","model_id":"other"'), NODE, "unknown_model"],
    [request('{"prompt":"Hi","max_tokens":257}'), NODE, "bad_request"],
    [request(`{"messages":[{"role":"user","content":"${"x".repeat(101)}"}]}`), NODE, "bad_request"],
    [request('{"prompt":"Hi","prefix_tokens":[-1]}'), NODE, "bad_request"],
    [request('{"prompt":"Hi","prefix_tokens":[1000]}'), NODE, "bad_request"],
    [request('{"prompt":"Hi","grammar":"root ::= \\"a\\""}'), NODE, "bad_request"],
    [request('{"prompt":"Hi","repetition_penalty":1.1}'), { ...NODE, rawLogits: false }, "bad_request"],
    // The tab renders no tools (its template engine is not told of them): refused, never guessed.
    [request('{"messages":[{"role":"user","content":"Hi"}],"tools":[{"name":"f"}]}'), NODE, "bad_request"],
    [request('{"messages":[{"role":"tool","content":"18","tool_call_id":"c1"}]}'), NODE, "bad_request"],
  ];
  for (const [payload, node, code] of refusals) {
    assert.throws(() => admitRequest(payload, node), (e) => e instanceof Refusal && e.code === code, new TextDecoder().decode(payload));
  }
  const frame = (() => {
    try {
      admitRequest(request('{"prompt":"Hi"}', `"request_id":"r1","model_hash":"${"cd".repeat(32)}"`), NODE);
    } catch (refusal) {
      return refusal.frame();
    }
  })();
  assert.match(frame, /^\{"kind":"error","code":"unknown_model","message":"this node does not serve cdcd/);
  const ok = admitRequest(request(`{"prompt":"Hi","prefix_tokens":[999],"repetition_penalty":1.1}`, `"request_id":"r1","model_hash":"${"ab".repeat(32)}"`), NODE);
  assert.deepEqual(ok.params.prefix_tokens, [999]);
});
