// The adjustments of docs/protocol.md ("The sampler", adjustments), worked by hand: there
// are no vectors for them, so each case is the spec's sentence on a few logits.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Adjuster, tokenLogprobs } from "../src/spec/adjust.js";
import { decodeRequest } from "../src/spec/messages.js";

const params = (extra) => decodeRequest(`{"request_id":"r","params":{"prompt":"x"${extra}}}`).params;

test("no adjustment asked: none needed", () => {
  assert.equal(Adjuster.needed(params("")), false);
  assert.equal(Adjuster.needed(params(',"min_p":0.1')), false, "min_p only when sampling");
  assert.equal(Adjuster.needed(params(',"min_p":0.1,"temperature":0.5')), true);
});

test("logit_bias, then repetition over the last 64 of prompt and completion, then presence and frequency", () => {
  const p = params(',"logit_bias":[[0,1.5],[3,-2]],"repetition_penalty":2,"presence_penalty":0.5,"frequency_penalty":0.25');
  const prompt = [2, ...new Array(64).fill(4)]; // token 2 falls out of the 64-token window
  const adjuster = new Adjuster(p, prompt);
  adjuster.push(0);
  adjuster.push(0);
  adjuster.push(1);
  const out = adjuster.logits(Float32Array.of(1, -1, 3, 2, -4, 5));
  // 0: (1 + 1.5) / 2 - (0.5 + 0.25 * 2); 1: -1 * 2 - (0.5 + 0.25); 2: not recent; 3: biased
  // only; 4: -4 * 2 (in the window); 5: untouched.
  assert.deepEqual(Array.from(out), [0.25, -2.75, 3, 0, -8, 5]);
});

test("min_p sets to -inf every logit below max + temperature * ln(min_p)", () => {
  const p = params(',"min_p":0.5,"temperature":2');
  const floor = 3 + 2 * Math.log(0.5); // 1.6137…
  const out = new Adjuster(p, []).logits(Float64Array.of(3, 1.7, 1.6, -1));
  assert.deepEqual(Array.from(out), [3, 1.7, -Infinity, -Infinity]);
  assert.ok(1.6 < floor && floor < 1.7);
});

test("logprobs: log-softmax at temperature 1, the likeliest first, ties to the lower id, -inf left out", () => {
  const logits = Float64Array.of(0, Math.log(3), 0, -Infinity);
  const piece = (t) => Uint8Array.of(0x61 + t);
  const got = tokenLogprobs(logits, 2, 5, piece);
  const z = Math.log(5);
  assert.equal(got.piece, "63");
  assert.ok(Math.abs(got.logprob - -z) < 1e-15);
  assert.deepEqual(got.top.map((c) => [c.token_id, c.piece]), [[1, "62"], [0, "61"], [2, "63"]]);
  assert.ok(Math.abs(got.top[0].logprob - (Math.log(3) - z)) < 1e-15);
});
