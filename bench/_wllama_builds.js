// For bench/browser_builds.py: greedy decoding in a tab with several wllama builds, loaded
// from the directory the bench serves at /browser/builds/. wllama 3 has no low-level API
// (no tokenize, decode or getLogits), so every build is also timed through its own
// completion call (sampling inside the WebAssembly), and 2.4.0 through the calls dinet's
// engine makes as well. Each run answers twice and reports the second answer.
import { Wllama as W2 } from "w2";
import { Wllama as W3 } from "w3";

const quiet = { debug() {}, log() {}, warn() {}, error: console.error };
const B = "/browser/builds";

// dinet's engine (web/src/engine.js) as it was: decode one token, then getLogits(1) for the
// likeliest (wllama exponentiates and sorts all n_vocab), or with `sample` as it is now:
// samplingSample with top_k 1 (llama.cpp's partial sort keeps the first largest logit).
async function w2LowLevel(blob, threads, prompt, tokens, sample = false) {
  const w = new W2({ "single-thread/wllama.wasm": `${B}/w2/single-thread/wllama.wasm`, "multi-thread/wllama.wasm": `${B}/w2/multi-thread/wllama.wasm` },
    { suppressNativeLog: true, logger: quiet });
  await w.loadModel([blob], { n_threads: threads, n_ctx: 2048, n_batch: 512 });
  const ids = await w.tokenize(prompt, true);
  if (sample) await w.samplingInit({ top_k: 1, temp: 0 });
  const best = async () => (sample ? [await w.samplingSample()] : w.getLogits(1));
  const once = async () => {
    await w.kvClear();
    await w.decode(ids, {});
    let probs = await best();
    const out = [probs[0].token];
    let dec = 0, lg = 0; const t0 = performance.now();
    while (out.length < tokens) {
      const a = performance.now(); await w.decode([out.at(-1)], {}); const b = performance.now();
      probs = await best(); lg += performance.now() - b; dec += b - a;
      out.push(probs[0].token);
    }
    return { steps: tokens - 1, ms: performance.now() - t0, decodeMs: dec, logitsMs: lg, tokens: out };
  };
  await once();
  const r = await once();
  const th = w.isMultithread() ? w.getNumThreads() : 1;
  await w.exit();
  return { ...r, threads: th };
}

// wllama 2.4.0's createCompletion: sampling (temperature 0) inside the WebAssembly.
async function w2High(blob, threads, prompt, tokens) {
  const w = new W2({ "single-thread/wllama.wasm": `${B}/w2/single-thread/wllama.wasm`, "multi-thread/wllama.wasm": `${B}/w2/multi-thread/wllama.wasm` },
    { suppressNativeLog: true, logger: quiet });
  await w.loadModel([blob], { n_threads: threads, n_ctx: 2048, n_batch: 512 });
  const once = async () => {
    const stamps = []; const out = [];
    await w.createCompletion(prompt, { nPredict: tokens, sampling: { temp: 0 }, useCache: false,
      onNewToken: (t) => { stamps.push(performance.now()); out.push(t); } });
    return { steps: stamps.length - 1, ms: stamps.at(-1) - stamps[0], tokens: out };
  };
  await once();
  const r = await once();
  const th = w.isMultithread() ? w.getNumThreads() : 1;
  await w.exit();
  return { ...r, threads: th };
}

// wllama 3's createCompletion (llama-server's server-context), default build (Memory64 and
// JSPI) or the compat build (@wllama/wllama-compat: 32-bit memory, Asyncify).
async function w3High(blob, threads, prompt, tokens, compat) {
  const w = new W3({ default: `${B}/w3/wllama.wasm` }, { suppressNativeLog: true, logger: quiet });
  w.setCompat(compat ? { wasm: `${B}/w3compat/wllama.wasm`, worker: `${B}/w3compat/wllama.js` } : null);
  // wllama 3 takes its compat build where the browser lacks JSPI: hide it while loading.
  const suspending = WebAssembly.Suspending;
  let used;
  if (compat) delete WebAssembly.Suspending;
  try {
    await w.loadModel([blob], { n_threads: threads, n_ctx: 2048, n_batch: 512, n_gpu_layers: 0 });
    used = w.getWorkerResources(); // which build it loaded (asked again later, it would answer anew)
  } finally {
    if (suspending) WebAssembly.Suspending = suspending;
  }
  const once = async () => {
    const stamps = []; let timings = null; let text = "";
    await w.createCompletion({ prompt, max_tokens: tokens, temperature: 0, top_k: 1, ignore_eos: true, cache_prompt: false, stream: true,
      onData: (c) => { if (c.choices?.[0]?.text) { stamps.push(performance.now()); text += c.choices[0].text; } if (c.timings) timings = c.timings; } });
    return { steps: stamps.length - 1, ms: stamps.at(-1) - stamps[0], timings, text };
  };
  await once();
  const r = await once();
  const th = w.isMultithread() ? w.getNumThreads() : 1;
  await w.exit();
  return { ...r, threads: th, compat: used.compat, wasm: used.wasmPath };
}

export async function run({ blob, engine, threads, prompt, tokens }) {
  if (engine === "2.4.0") return w2LowLevel(blob, threads, prompt, tokens);
  if (engine === "2.4.0-sample") return w2LowLevel(blob, threads, prompt, tokens, true);
  if (engine === "2.4.0-completion") return w2High(blob, threads, prompt, tokens);
  if (engine === "3.13.0") return w3High(blob, threads, prompt, tokens, false);
  if (engine === "3.13.0-compat") return w3High(blob, threads, prompt, tokens, true);
  throw new Error(engine);
}
