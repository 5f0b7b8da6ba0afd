// sampler.json: every uniform draw, every choose case (token, u, lo, hi), the 4096-token draws.
import assert from "node:assert/strict";
import { test } from "node:test";
import { choose, draw, logitsFromProbabilities, uniform, uniformDigest, uniformInput } from "../src/spec/sampler.js";
import { exactVectors, fromHex, hex, vectors } from "../testing/vectors.mjs";

const SAMPLER = vectors("sampler");
const EXACT = exactVectors("sampler"); // seeds past 2^53 keep their digits here

test("uniform: input bytes, BLAKE2b digest and u for every (seed, index)", () => {
  assert.equal(SAMPLER.uniform.length, 7);
  EXACT.uniform.forEach((exact, i) => {
    const want = SAMPLER.uniform[i];
    const seed = BigInt(exact.seed.text);
    const index = BigInt(exact.index.text);
    assert.equal(hex(uniformInput(seed, index)), want.input_hex);
    assert.equal(hex(uniformDigest(seed, index)), want.digest_hex);
    assert.equal(uniform(seed, index), want.u);
    assert.equal(uniform(seed, index), hexFloat(want.u_hex));
  });
});

test("choose: every case's token, and u, lo, hi where it samples", () => {
  assert.equal(SAMPLER.choose.length, 6);
  for (const c of SAMPLER.choose) {
    const logits = Float32Array.from(c.logits); // engines give float32; the sampler widens them
    const options = { temperature: c.temperature, topP: c.top_p, seed: c.seed };
    assert.equal(choose(logits, c.index, options), c.token, c.why);
    if (c.temperature > 0) {
      const got = draw(logits, c.index, options);
      assert.equal(got.u, c.u, c.why);
      near(got.lo, c.lo, c.why);
      near(got.hi, c.hi, c.why);
    }
  }
});

test("choose_many: 24 draws over 4096 float32 logits", () => {
  const many = SAMPLER.choose_many;
  const bytes = fromHex(Buffer.from(many.logits_f32le_b64, "base64").toString("hex"));
  const logits = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  assert.equal(logits.length, 4096);
  assert.equal(many.draws.length, 24);
  for (const d of many.draws) {
    const got = draw(logits, d.index, { temperature: many.temperature, topP: many.top_p, seed: many.seed });
    assert.equal(got.token, d.token, `index ${d.index}`);
    assert.equal(got.u, d.u);
    near(got.lo, d.lo);
    near(got.hi, d.hi);
  }
});

test("logits from softmax probabilities choose the same tokens as the logits", () => {
  const many = SAMPLER.choose_many;
  const bytes = Buffer.from(many.logits_f32le_b64, "base64");
  const logits = Array.from(new Float32Array(new Uint8Array(bytes).buffer));
  const top = Math.max(...logits);
  const total = logits.reduce((sum, x) => sum + Math.exp(x - top), 0);
  const entries = logits.map((x, token) => ({ token, p: Math.exp(x - top) / total })).reverse();
  const fromProbs = logitsFromProbabilities(entries, logits.length);
  for (const d of many.draws) {
    const options = { temperature: many.temperature, topP: many.top_p, seed: many.seed };
    assert.equal(choose(fromProbs, d.index, options), d.token, `index ${d.index}`);
  }
  assert.equal(choose(fromProbs, 0), choose(logits, 0), "greedy");
  assert.equal(logitsFromProbabilities([{ token: 1, p: 0 }], 3)[1], -Infinity);
});

/** lo and hi divide by W, whose summation order the spec leaves open (the vectors' use an
 * exactly rounded sum, nodes NumPy's pairwise one): equal to a few units in the last place. */
function near(got, want, why) {
  assert.ok(Math.abs(got - want) <= 1e-14, `${why}: ${got} is not ${want}`);
}

/** A C99 hex float ("0x1.44a5c1a6a29d3p-2") as a double. */
function hexFloat(text) {
  const [, sign, whole, fraction, exponent] = /^(-?)0x([01])\.([0-9a-f]+)p([+-]?\d+)$/.exec(text);
  const mantissa = Number(BigInt(`0x${whole}${fraction}`)) / 16 ** fraction.length;
  return (sign ? -1 : 1) * mantissa * 2 ** Number(exponent);
}
