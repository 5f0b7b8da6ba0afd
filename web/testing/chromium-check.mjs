// Run inside headless Chromium by tests/browser/test_js_vectors.py (bundled with esbuild as
// an IIFE: window.dinetSpecCheck(vectors)). It recomputes the sampler and signing vectors
// with the browser's own engine (its Math.exp, BigInt, TextEncoder, crypto) and returns
// what it got; Python compares that with the vector files.
import * as spec from "../src/spec/index.js";
import { loadIdentity, memoryStore } from "../src/identity.js";

const fromHex = (text) => Uint8Array.from(text.match(/../g) ?? [], (pair) => parseInt(pair, 16));

window.dinetSpecCheck = async ({ keys, sampler, receipt, manifest, text }) => {
  const exact = spec.parseJson(sampler.uniform_text); // seeds past 2^53 keep their digits
  const uniform = exact.map((c) => spec.uniform(BigInt(c.seed.text), BigInt(c.index.text)));
  const choose = sampler.choose.map((c) =>
    spec.choose(Float32Array.from(c.logits), c.index, { temperature: c.temperature, topP: c.top_p, seed: c.seed }),
  );
  const many = sampler.choose_many;
  const bytes = Uint8Array.from(atob(many.logits_f32le_b64), (ch) => ch.charCodeAt(0));
  const logits = new Float32Array(bytes.buffer);
  const chooseMany = many.draws.map((d) =>
    spec.choose(logits, d.index, { temperature: many.temperature, topP: many.top_p, seed: many.seed }),
  );
  const node = await loadIdentity(memoryStore(fromHex(keys.node.seed)));
  const client = fromHex(keys.client.seed);
  const signed = { body: receipt.node.body, node_signature: node.sign(spec.NODE_DOMAIN, receipt.node.body) };
  const countersigned = spec.CountersignedReceipt.write(spec.countersign(signed, client));
  const forged = { ...spec.countersign(signed, client), client_signature: receipt.node.signature };
  let forgedRefused = false;
  try {
    spec.verifyCountersigned(forged);
  } catch (error) {
    forgedRefused = error instanceof spec.BadReceipt;
  }
  const signedManifest = spec.signManifest(node.seed, JSON.parse(manifest.body));
  const answers = text.cases.map((c) => {
    const completion = new spec.CompletionText(c.stops);
    c.prefix_hex.forEach((p) => completion.prime(fromHex(p)));
    let answer = "";
    let stopped = false;
    for (const t of c.tokens) {
      const out = completion.push(t.index, t.token_id, fromHex(t.bytes_hex));
      answer += out.frames.map((f) => f.text).join("");
      if ((stopped = out.stopped)) break;
    }
    return answer + (stopped ? [] : completion.finish()).map((f) => f.text).join("");
  });
  return {
    peerId: node.peerId,
    libp2pPeerIdBytes: Array.from((await node.privateKey()).publicKey.raw),
    uniform,
    choose,
    chooseMany,
    nodeSignature: signed.node_signature,
    countersigned,
    verified: spec.verifyCountersigned(spec.decodeCountersigned(countersigned)).request_id,
    forgedRefused,
    manifestSignature: signedManifest.signature,
    manifestBody: signedManifest.body,
    answers,
  };
};
