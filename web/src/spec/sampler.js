// The sampler (docs/protocol.md, "The sampler"): the token for completion position `i`
// depends only on the logits, the seed and `i`, so any honest peer continues or checks an
// answer exactly as the first peer would. Every step is an IEEE double operation that
// JavaScript performs bit for bit like the reference, except `Math.exp` and the order of
// the sum W, which the spec allows (a few ulps: about one token in 10^15 draws).

import { blake2b } from "@noble/hashes/blake2.js";

const PERSONAL = Uint8Array.from([..."dinet-sampler"].map((c) => c.charCodeAt(0)).concat([0, 0, 0]));
const TWO_64 = 2 ** 64;
const U64 = (1n << 64n) - 1n;

/** The 16 bytes BLAKE2b reads: seed and index, each 8 bytes big-endian unsigned. */
export function uniformInput(seed, index) {
  const bytes = new Uint8Array(16);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(seed) & U64);
  view.setBigUint64(8, BigInt(index) & U64);
  return bytes;
}

/** BLAKE2b-64 of the input, personalised "dinet-sampler" + 3 zero bytes. */
export function uniformDigest(seed, index) {
  return blake2b(uniformInput(seed, index), { dkLen: 8, personalization: PERSONAL });
}

/** A number in [0, 1] that depends only on (seed, index): the digest as a big-endian
 * unsigned 64-bit integer, rounded to the nearest double (Number(BigInt) rounds to
 * nearest, ties to even, as the spec asks), over 2^64. */
export function uniform(seed, index) {
  const digest = uniformDigest(seed, index);
  return Number(new DataView(digest.buffer, digest.byteOffset, 8).getBigUint64(0)) / TWO_64;
}

/**
 * The token to emit at completion position `index`. `logits` is any array-like of numbers
 * (a Float32Array from an engine is widened to double, as the spec requires, before it is
 * divided). Temperature 0 is greedy: the lowest id among the largest logits.
 */
export function choose(logits, index, { temperature = 0, topP = 1, seed = 0 } = {}) {
  return draw(logits, index, { temperature, topP, seed }).token;
}

/** `choose` with the draw interval [lo, hi) that gives its token (null when greedy), and u. */
export function draw(logits, index, { temperature = 0, topP = 1, seed = 0 } = {}) {
  const n = logits.length;
  if (n === 0) throw new RangeError("no logits");
  if (temperature <= 0) {
    let best = 0;
    for (let t = 1; t < n; t++) if (logits[t] > logits[best]) best = t;
    return { token: best, u: null, lo: null, hi: null };
  }
  const scaled = new Float64Array(n); // s[t] = logits[t] / temperature, in double
  let top = -Infinity;
  for (let t = 0; t < n; t++) {
    scaled[t] = logits[t] / temperature;
    if (scaled[t] > top) top = scaled[t];
  }
  const weights = new Float64Array(n); // w[t] = exp(s[t] - m): the best token weighs 1
  for (let t = 0; t < n; t++) weights[t] = Math.exp(scaled[t] - top);
  const total = pairwiseSum(weights, 0, n); // W, summed as NumPy does
  const u = uniform(seed, index);
  // Only the head of the order matters: tokens by s descending, ties by ascending id.
  // Sort all ids once (a typed array sort of 49,152 ids takes a few ms).
  const order = Uint32Array.from({ length: n }, (_, t) => t).sort((a, b) => scaled[b] - scaled[a] || a - b);
  let end = n;
  let mass = total;
  let running = 0;
  const cumulative = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    running += weights[order[k]];
    cumulative[k] = running;
    if (topP < 1 && end === n && running >= topP * total) {
      end = k + 1;
      break;
    }
  }
  if (topP < 1) mass = cumulative[end - 1];
  else if (end === n) mass = total;
  const target = u * mass;
  let k = 0;
  while (k < end - 1 && !(cumulative[k] > target)) k++;
  return { token: order[k], u, lo: (k ? cumulative[k - 1] : 0) / mass, hi: cumulative[k] / mass };
}

/** NumPy's float64 sum: pairwise over blocks of 128, each block summed in 8 lanes. Matching it
 * keeps W bit-equal to the reference's on large vocabularies (the spec allows either order). */
export function pairwiseSum(values, start, count) {
  if (count < 8) {
    let sum = 0;
    for (let i = 0; i < count; i++) sum += values[start + i];
    return sum;
  }
  if (count <= 128) {
    const r = [0, 1, 2, 3, 4, 5, 6, 7].map((j) => values[start + j]);
    let i = 8;
    for (; i < count - (count % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += values[start + i + j];
    let sum = r[0] + r[1] + (r[2] + r[3]) + (r[4] + r[5] + (r[6] + r[7]));
    for (; i < count; i++) sum += values[start + i];
    return sum;
  }
  let half = Math.floor(count / 2);
  half -= half % 8;
  return pairwiseSum(values, start, half) + pairwiseSum(values, start + half, count - half);
}

/**
 * Logits from the probabilities wllama 2.4.0's `getLogits(-1)` gives (it returns
 * softmax(logits), [{token, p}, …], sorted by p). log p[t] = logits[t] - log Σ exp(logits), the
 * same shift for every token, and the sampler is blind to such a shift: greedy takes the
 * same argmax; s[t] - m and so every weight, W, c[k] and the draw are unchanged; min_p's
 * floor moves with max; log-probabilities are log-softmax values, which it does not
 * change; logit_bias and the presence/frequency penalties add per token. Two caveats,
 * both kept in the report: the identity is exact only in real arithmetic (wllama
 * normalises in float32, so these differ from the engine's logits minus a constant by
 * ~1e-7, and tokens whose p underflows to 0 come back at -inf), and `repetition_penalty`
 * is NOT shift-invariant (it divides positive logits and multiplies negative ones), so a
 * node working from probabilities cannot apply it faithfully.
 */
export function logitsFromProbabilities(entries, nVocab) {
  const logits = new Float64Array(nVocab).fill(-Infinity);
  for (const { token, p } of entries) logits[token] = Math.log(p);
  return logits;
}
