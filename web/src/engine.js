// llama.cpp in the tab: a thin wrapper over wllama 2.4.0's low-level API.
//
// The node's sampler needs the next position's probabilities, not wllama's own sampling,
// so an Engine only feeds tokens and reads probabilities: prefill(tokens), then
// step(token) once per generated token. wllama's getLogits returns softmax
// probabilities, sorted by probability, top K of them (topK = -1: all n_vocab); it
// exponentiates and sorts all n_vocab even for one, so topK = 1 (greedy) asks wllama's
// sampler instead, set to top_k 1 (1.5 ms a token against 7.6, bench/RESULTS.md):
// llama.cpp's partial sort keeps the first of the largest logits, the lowest id among
// them, as the sampler spec's greedy does. (wllama 3 has no low-level API at all.)
import { Wllama } from "@wllama/wllama";

// Where the gateway serves wllama's WebAssembly builds (web/build.mjs copies them there).
export const WASM_PATHS = {
  "single-thread/wllama.wasm": "/browser/wllama/single-thread/wllama.wasm",
  "multi-thread/wllama.wasm": "/browser/wllama/multi-thread/wllama.wasm",
};

// Threads need SharedArrayBuffer, which a browser gives only to a cross-origin isolated page.
export function canUseThreads() {
  return globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer !== "undefined";
}

// Half the cores, as wllama itself picks: the rest stay with the person using the machine.
// (Measured here: on 2 busy cores, 2 threads spin-waited down to 2 tok/s, 1 thread kept 7.)
export function defaultThreads() {
  return canUseThreads() ? Math.max(1, Math.floor((navigator.hardwareConcurrency || 1) / 2)) : 1;
}

export class Engine {
  constructor(wllama, threads) {
    this.wllama = wllama;
    this.threads = threads; // what wllama actually runs with (1 unless multi-thread)
    const info = wllama.getLoadedContextInfo();
    this.nVocab = info.n_vocab;
    this.nCtx = info.n_ctx;
    this.nPast = 0; // tokens in the KV cache
  }

  // Text to token ids the way the native node does it: special tokens parsed, no BOS added.
  tokenize(text) {
    return this.wllama.tokenize(text, true);
  }

  detokenize(tokens) {
    return this.wllama.detokenize(tokens); // bytes: a token may end inside a UTF-8 sequence
  }

  lookupToken(piece) {
    return this.wllama.lookupToken(piece);
  }

  // End-of-generation tokens (EOS, <|im_end|>, ...), where the native node stops.
  isEndToken(token) {
    return this.wllama.isTokenEOG(token);
  }

  // Start a new sequence: the KV cache emptied, then `tokens` run in batches.
  // Returns the probabilities for the position after the last prompt token
  // ([{token, p}], most probable first; topK = 1: the likeliest token, p null).
  async prefill(tokens, { topK = 1 } = {}) {
    if (tokens.length === 0) throw new Error("an empty prompt has no next token");
    await this.wllama.kvClear();
    this.nPast = 0;
    return this.#feed(tokens, topK);
  }

  // Append one (generated) token and return the next position's probabilities.
  step(token, { topK = 1 } = {}) {
    return this.#feed([token], topK);
  }

  // Forget everything after the first `keep` tokens (a shorter shared prefix).
  async truncate(keep) {
    if (keep < this.nPast) {
      await this.wllama.kvRemove(keep, this.nPast - keep);
      this.nPast = keep;
    }
  }

  async #feed(tokens, topK) {
    const { nPast } = await this.wllama.decode(tokens, {});
    this.nPast = nPast;
    if (topK === 1) {
      const { token } = await this.wllama.samplingSample(); // the arg-max: no probabilities
      return [{ token, p: null }];
    }
    return this.wllama.getLogits(topK); // [{token, p}], most probable first
  }

  // Greedy decoding: up to `maxTokens` most probable tokens after `prompt` (token ids),
  // stopping after an end-of-generation token (not included). Timings for the benchmark.
  async greedy(prompt, maxTokens) {
    const start = performance.now();
    let probs = await this.prefill(prompt);
    const firstAt = performance.now();
    const tokens = [];
    let steps = 0; // decodes after the prefill
    while (tokens.length < maxTokens && !this.isEndToken(probs[0].token)) {
      tokens.push(probs[0].token);
      if (tokens.length < maxTokens) {
        probs = await this.step(probs[0].token);
        steps += 1;
      }
    }
    return { tokens, steps, ttftMs: firstAt - start, decodeMs: performance.now() - firstAt };
  }

  close() {
    return this.wllama.exit();
  }
}

// Load a GGUF (one Blob holding the whole file) into wllama.
export async function loadEngine(blob, { threads = defaultThreads(), nCtx = 2048, nBatch = 512, log = false } = {}) {
  const quiet = { debug() {}, log() {}, warn() {}, error: console.error };
  const wllama = new Wllama(WASM_PATHS, { suppressNativeLog: !log, logger: log ? console : quiet });
  await wllama.loadModel([blob], { n_threads: threads, n_ctx: nCtx, n_batch: nBatch });
  await wllama.samplingInit({ top_k: 1, temp: 0 }); // greedy steps (#feed with topK = 1)
  return new Engine(wllama, wllama.isMultithread() ? wllama.getNumThreads() : 1);
}
