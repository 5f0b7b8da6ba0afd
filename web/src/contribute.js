// "Contribute this tab": from the switch to serving. The tab takes its identity (IndexedDB),
// the model its gateway's node serves (verified chunks, kept in OPFS), loads it in wllama,
// measures its own speed, then dials that node, holds a relay slot there and answers
// /dinet/manifest/1, /dinet/infer/1 and /dinet/swim/1 like any node; the node passes its
// manifest on (dinet.node.hosting), so clients find it and reach it through the relay.

import { loadEngine } from "./engine.js";
import { loadIdentity } from "./identity.js";
import { MANIFEST_PROTOCOL, openLink, registerHandler } from "./link.js";
import { openModel } from "./model_store.js";
import { PromptBuilder } from "./prompt.js";
import { InferService } from "./serve.js";
import { MANIFEST_TTL_S, ManifestQuery, SWIM_PROTOCOL, SignedManifest, decodeWith, signManifest } from "./spec/index.js";
import { SwimMember } from "./swim.js";

export const INFER_PROTOCOL = "/dinet/infer/1";
const QUERY_WAIT_MS = 5_000; // as a native node waits for a manifest query
const WARM_UP_TOKENS = 16; // the speed the manifest advertises before the first answer
const VERSION = "dinet/0.1.0-tab";

/**
 * Starts contributing; resolves to a Contribution once the tab serves. `onStatus(text)` is
 * told each step for the page; `identityStore` replaces IndexedDB (tests); `threads` is
 * wllama's thread count (default: what the browser allows).
 */
export async function contribute({ base = "", onStatus = () => {}, onProgress = () => {}, identityStore, threads } = {}) {
  onStatus("identity");
  const identity = await loadIdentity(identityStore);
  const entry = await fetchJson(`${base}/api/browser`);
  onStatus("asking the node what it serves");
  const probe = await openLink({ privateKey: await identity.privateKey(), addrs: entry.addrs, reserve: false });
  let offer;
  try {
    offer = offerOf(await probe.queryManifests({ include_known: false }), entry.peer_id);
  } finally {
    await probe.close();
  }
  onStatus("fetching the model");
  const model = await openModel(offer.model_hash, { base, onProgress });
  onStatus("loading the model");
  const engine = await loadEngine(model.blob, { nCtx: offer.context, ...(threads ? { threads } : {}) });
  const prompts = await PromptBuilder.of(engine.wllama);
  const service = new InferService({ engine, prompts, model: { id: offer.model_id, hash: offer.model_hash }, identity });
  onStatus("measuring this tab's speed");
  service.speed = await measure(engine, prompts);
  const contribution = new Contribution({ identity, offer, engine, service, model, entry });
  await registerHandler(INFER_PROTOCOL, (framed) => service.handle(framed));
  await registerHandler(MANIFEST_PROTOCOL, (framed) => contribution.answerQuery(framed));
  await registerHandler(SWIM_PROTOCOL, (framed) => contribution.member.answer(framed));
  onStatus("joining the network");
  contribution.link = await openLink({ privateKey: await identity.privateKey(), addrs: entry.addrs });
  onStatus("serving");
  return contribution;
}

/** A tab that serves: what it costs and what it has done, for the page. */
export class Contribution {
  constructor({ identity, offer, engine, service, model, entry }) {
    this.identity = identity;
    this.offer = offer;
    this.engine = engine;
    this.service = service;
    this.model = model; // {blob, card, stats}
    this.node = entry.peer_id;
    this.member = new SwimMember(identity.peerId); // answers the probes of the peers using it
    this.link = null;
  }

  get peerId() {
    return this.identity.peerId;
  }

  /** This tab's signed manifest now: reached through its node's relay, re-signed each time. */
  manifest() {
    const now = Date.now() / 1000;
    return signManifest(this.identity.seed, {
      peer_id: this.peerId,
      version: VERSION,
      region: "",
      addrs: this.link ? this.link.circuitAddrs().slice(0, 16) : [],
      models: [this.offer],
      max_concurrent: 1,
      tokens_per_s: this.service.speed.tokensPerS,
      ttft_ms: this.service.speed.ttftMs,
      price_per_token: 0,
      load: this.service.load,
      issued_at: now,
      expires_at: now + MANIFEST_TTL_S,
      reach: "private",
    });
  }

  /** /dinet/manifest/1: one query in, this tab's own manifest out (it holds no others). */
  async answerQuery(framed) {
    let payload;
    try {
      payload = await framed.receivePayload(QUERY_WAIT_MS);
      if (payload === null) throw new Error("no query");
      decodeWith(ManifestQuery, new TextDecoder().decode(payload));
    } catch {
      framed.abort("no valid manifest query in time"); // the protocol: a reset, no error frame
      return;
    }
    const manifests = [SignedManifest.write(this.manifest())];
    await framed.send(`{"kind":"manifests","manifests":[${manifests.join(",")}]}`);
    await framed.close();
  }

  async stop() {
    await this.link?.close();
    await this.engine.close();
  }
}

/** The whole-model offer in the node's own manifest (the first one it sends). */
function offerOf(manifests, nodeId) {
  const own = manifests[0];
  const body = own ? JSON.parse(own.body) : null;
  if (!body || body.peer_id !== nodeId) throw new Error("the node did not send its own manifest");
  const offer = body.models.find((m) => !m.stage && (m.task ?? "generate") === "generate");
  if (!offer) throw new Error("the node serves no whole generative model a tab could serve too");
  const { model_id, model_hash, quantization, context, layers } = offer;
  return { model_id, model_hash, quantization, context, layers };
}

/** Decode speed and time to first token of a short greedy answer, as the manifest gives them. */
async function measure(engine, prompts) {
  const { tokens } = await prompts.tokens({ messages: [{ role: "user", content: "Count from one to twenty." }], prompt: null });
  const run = await engine.greedy(tokens, WARM_UP_TOKENS);
  const tokensPerS = run.steps > 0 ? (run.steps * 1000) / run.decodeMs : 0;
  return { tokensPerS, ttftMs: run.ttftMs };
}

async function fetchJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}
