// Sampling controls that change the logits before the sampler chooses (docs/protocol.md,
// "The sampler", adjustments; the reference is dinet.engine.adjust). In this order, in
// double precision: logit_bias, repetition_penalty over the last 64 tokens of prompt and
// completion, presence and frequency penalties over the completion (prefix tokens
// included), and min_p when the temperature is above 0.

import { pairwiseSum } from "./sampler.js";

export const REPETITION_WINDOW = 64; // tokens, as llama.cpp's default repeat_last_n

/** The logit adjustments of one request (its decoded `params`), following its tokens as they come. */
export class Adjuster {
  #params;
  #bias;
  #recent;
  #counts = new Map();

  /** `prompt` is the prompt's token ids. */
  constructor(params, prompt = []) {
    this.#params = params;
    this.#bias = new Map();
    for (const [token, bias] of params.logit_bias ?? []) this.#bias.set(token, bias); // a repeat keeps the last
    this.#recent = prompt.slice(-REPETITION_WINDOW);
  }

  /** Whether the request asks for any adjustment (else the logits go to the sampler as they are). */
  static needed(params) {
    return Boolean(
      (params.logit_bias ?? []).length ||
        (params.repetition_penalty ?? 1) !== 1 ||
        params.presence_penalty ||
        params.frequency_penalty ||
        (params.min_p && params.temperature > 0),
    );
  }

  /** A completion token was emitted (or replayed from a resumed prefix). */
  push(token) {
    this.#recent.push(token);
    if (this.#recent.length > REPETITION_WINDOW) this.#recent.shift();
    this.#counts.set(token, (this.#counts.get(token) ?? 0) + 1);
  }

  /** The adjusted logits for the next token, a new Float64Array. */
  logits(raw) {
    const p = this.#params;
    const out = Float64Array.from(raw); // (n_vocab,)
    for (const [token, bias] of this.#bias) out[token] += bias;
    const r = p.repetition_penalty ?? 1;
    if (r !== 1) {
      for (const token of new Set(this.#recent)) out[token] = out[token] > 0 ? out[token] / r : out[token] * r;
    }
    const presence = p.presence_penalty ?? 0;
    const frequency = p.frequency_penalty ?? 0;
    if (presence || frequency) {
      for (const [token, count] of this.#counts) out[token] -= presence + frequency * count;
    }
    if (p.min_p && p.temperature > 0) {
      let max = -Infinity;
      for (const x of out) if (x > max) max = x;
      const floor = max + p.temperature * Math.log(p.min_p);
      for (let t = 0; t < out.length; t++) if (out[t] < floor) out[t] = -Infinity;
    }
    return out;
  }
}

/**
 * A token frame's `logprobs` (docs/protocol.md, "Log-probabilities"): log-softmax at
 * temperature 1 of the logits `choose` ran on, for `token` and the `top` likeliest tokens
 * (ties to the lower id, -inf left out). `piece(t)` gives a token's bytes.
 */
export function tokenLogprobs(logits, token, top, piece) {
  let best = -Infinity;
  for (const x of logits) if (x > best) best = x;
  const shifted = new Float64Array(logits.length);
  for (let t = 0; t < logits.length; t++) shifted[t] = Math.exp(logits[t] - best);
  const logZ = best + Math.log(pairwiseSum(shifted, 0, shifted.length));
  const logprob = (t) => Math.min(0, logits[t] - logZ);
  const ranked = [];
  if (top > 0) {
    const ids = [];
    for (let t = 0; t < logits.length; t++) if (Number.isFinite(logits[t])) ids.push(t);
    ids.sort((a, b) => logits[b] - logits[a] || a - b);
    for (const t of ids.slice(0, top)) ranked.push({ token_id: t, piece: hexPiece(piece(t)), logprob: logprob(t) });
  }
  return { logprob: logprob(token), piece: hexPiece(piece(token)), top: ranked };
}

const hexPiece = (bytes) => Array.from(bytes.slice(0, 256), (b) => b.toString(16).padStart(2, "0")).join("");
