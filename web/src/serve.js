// What a contributing tab does with an /dinet/infer/1 stream: the same exchange as a native
// node (docs/protocol.md, "/dinet/infer/1"): read one request, refuse it with a typed error
// or queue it for the one generation slot, stream token frames, end with a signed receipt,
// and keep the client's countersignature.

import {
  Adjuster,
  CompletionText,
  Refusal,
  acceptCountersigned,
  admitRequest,
  choose,
  logitsFromProbabilities,
  decodeCountersigned,
  endFrame,
  errorFrame,
  queuedFrame,
  signReceipt,
  tokenFrame,
  tokenLogprobs,
} from "./spec/index.js";

const REQUEST_WAIT_MS = 10_000; // the protocol's wait for the request frame
const COUNTERSIGN_WAIT_MS = 10_000; // and for the countersigned receipt after `end`
const QUEUED_EVERY_MS = 1_000;
const MAX_WAITING = 4; // beyond this many waiting requests, `busy`
const SEND_EVERY_MS = 40; // token frames are gathered for at most this long

/**
 * Serves inference on one loaded model: `engine` (web/src/engine.js) runs it, `prompts`
 * (web/src/prompt.js) builds prompts as a native node does, `model` is {id, hash} as the
 * manifest offers it; `identity` signs receipts; `prices` are what the manifest advertises.
 */
export class InferService {
  #engine;
  #model;
  #prompts;
  #identity;
  #pieces = new Map();
  #prices;
  #slot = Promise.resolve(); // one generation at a time: each request chains on the last
  #waiting = 0;
  #active = 0;

  constructor({ engine, prompts, model, identity, prices = { perToken: 0, perPromptToken: 0 }, maxTokens = 4096 }) {
    this.#engine = engine;
    this.#prompts = prompts;
    this.#model = model;
    this.#identity = identity;
    this.#prices = prices;
    this.maxTokens = maxTokens;
    this.stats = { served: 0, tokens: 0, credits: 0, countersigned: 0, refused: 0 };
    this.speed = { tokensPerS: 0, ttftMs: 0 }; // the last answer's, for the manifest
    // The answer being generated: tokens produced, and the text of the token frames sent.
    this.current = { tokens: 0, sent: "" };
    this.listeners = new Set(); // called after every answer, for the page
  }

  get load() {
    return { active: this.#active, queued: this.#waiting };
  }

  /** One stream: `stream` is a FramedStream (web/src/link.js) from the peer `client`. */
  async handle(stream, client = stream.remotePeer) {
    const payload = await stream.receivePayload(REQUEST_WAIT_MS).catch(() => null);
    if (payload === null) {
      await this.#refuse(stream, new Refusal("bad_request", "no request within 10 s"));
      return;
    }
    let request;
    try {
      request = admitRequest(payload, {
        modelId: this.#model.id,
        modelHash: this.#model.hash,
        maxTokens: this.maxTokens,
        nVocab: this.#engine.nVocab,
        grammar: false,
        rawLogits: false,
      });
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      await this.#refuse(stream, error);
      return;
    }
    if (this.#waiting >= MAX_WAITING) {
      await this.#refuse(stream, new Refusal("busy", "this tab's queue is full"));
      return;
    }
    const started = performance.now();
    const sent = await this.#takeSlot(stream, async () => {
      const answer = await this.#generate(stream, request, started);
      if (answer === null) return null;
      const receipt = signReceipt(this.#identity.seed, {
        requestId: request.request_id,
        requestPayload: payload,
        modelHash: this.#model.hash,
        node: this.#identity.peerId,
        client,
        promptTokens: answer.promptTokens,
        tokenIds: answer.tokenIds,
        firstIndex: request.params.prefix_tokens.length,
        pricePerPromptToken: this.#prices.perPromptToken,
        pricePerToken: this.#prices.perToken,
        issuedAt: Date.now() / 1000,
      });
      await stream.send(
        endFrame({
          finishReason: answer.finishReason,
          promptTokens: answer.promptTokens,
          completionTokens: request.params.prefix_tokens.length + answer.tokenIds.length,
          ttftMs: answer.ttftMs,
          tokensPerS: answer.tokensPerS,
          modelId: this.#model.id,
          modelHash: this.#model.hash,
          receipt: { kind: "receipt", ...receipt },
        }),
      );
      this.speed = { tokensPerS: answer.tokensPerS || this.speed.tokensPerS, ttftMs: answer.ttftMs };
      this.stats.served += 1;
      this.stats.tokens += answer.tokenIds.length;
      return receipt;
    });
    // The slot is free again: the client's countersignature may take its time.
    if (sent) await this.#keepCountersigned(stream, sent);
    for (const listener of this.listeners) listener(this.stats);
  }

  async #refuse(stream, refusal) {
    this.stats.refused += 1;
    await stream.send(refusal.frame()).catch(() => {});
    await stream.close().catch(() => {});
  }

  /** Runs `work` when the slot is free, and gives what it returns (null if it failed);
   * meanwhile a `queued` frame at once and every second. */
  async #takeSlot(stream, work) {
    const before = this.#slot;
    let release;
    this.#slot = new Promise((resolve) => (release = resolve));
    this.#waiting += 1;
    let ticker = null;
    try {
      let free = false;
      before.then(() => (free = true));
      await Promise.resolve();
      if (!free) {
        await stream.send(queuedFrame(this.#waiting - 1));
        ticker = setInterval(() => stream.send(queuedFrame(this.#waiting - 1)).catch(() => {}), QUEUED_EVERY_MS);
        await before;
      }
    } catch {
      this.#waiting -= 1;
      await before;
      release();
      return null;
    } finally {
      if (ticker !== null) clearInterval(ticker);
    }
    this.#waiting -= 1;
    this.#active += 1;
    this.current = { tokens: 0, sent: "" };
    try {
      return await work();
    } catch (error) {
      // A client that went away (reset) ends the answer here; anything else is `internal`.
      await stream.send(errorFrame("internal", String(error?.message ?? error).slice(0, 300))).catch(() => {});
      stream.abort(error);
      return null;
    } finally {
      this.#active -= 1;
      this.current = { tokens: 0, sent: "" };
      release();
    }
  }

  /** Streams the completion's token frames; null when the request was refused instead. */
  async #generate(stream, request, started) {
    const engine = this.#engine;
    const params = request.params;
    let built;
    try {
      built = await this.#prompts.tokens(params);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      await this.#refuse(stream, error);
      return null;
    }
    const { tokens: prompt, stops } = built;
    const prefix = params.prefix_tokens;
    if (prompt.length === 0 || prompt.length + prefix.length + 1 > engine.nCtx) {
      const why = prompt.length === 0 ? "an empty prompt" : `no room left in the model's context of ${engine.nCtx}`;
      await this.#refuse(stream, new Refusal("bad_request", why));
      return null;
    }
    const text = new CompletionText([...params.stop, ...stops]);
    const adjust = Adjuster.needed(params) ? new Adjuster(params, prompt) : null;
    for (const token of prefix) {
      text.prime(await this.#piece(token));
      adjust?.push(token);
    }
    // Greedy needs only the likeliest token; anything else reads the whole distribution.
    const greedy = params.temperature === 0 && adjust === null && params.logprobs === null;
    const topK = greedy ? 1 : -1;
    let next = await engine.prefill([...prompt, ...prefix], { topK });
    const tokenIds = [];
    const pending = [];
    let lastSend = performance.now();
    let ttftMs = 0;
    let firstAt = 0;
    let finishReason = "length";
    const flush = async () => {
      for (const { frame, text: piece } of pending.splice(0)) {
        await stream.send(frame);
        this.current.sent += piece;
      }
      lastSend = performance.now();
    };
    for (let index = prefix.length; index < params.max_tokens; index++) {
      let token;
      let logprobs = null;
      if (greedy) {
        token = next[0].token;
      } else {
        const raw = logitsFromProbabilities(next, engine.nVocab);
        const logits = adjust ? adjust.logits(raw) : raw;
        token = choose(logits, index, { temperature: params.temperature, topP: params.top_p, seed: params.seed });
        if (params.logprobs !== null) logprobs = await this.#logprobs(logits, token, params.logprobs);
      }
      if (tokenIds.length === 0) {
        firstAt = performance.now();
        ttftMs = firstAt - started;
      }
      if (engine.isEndToken(token)) {
        finishReason = "stop";
        break;
      }
      tokenIds.push(token);
      this.current.tokens = tokenIds.length;
      adjust?.push(token);
      const { frames, stopped } = text.push(index, token, await this.#piece(token));
      for (const frame of frames) {
        const withLogprobs = frame.token_id === token ? logprobs : null;
        pending.push({ frame: tokenFrame(frame.index, frame.token_id, frame.text, withLogprobs), text: frame.text });
      }
      if (tokenIds.length === 1 || performance.now() - lastSend >= SEND_EVERY_MS) await flush();
      if (stopped) {
        finishReason = "stop";
        break;
      }
      if (index + 1 >= params.max_tokens || prompt.length + index + 1 >= engine.nCtx) break; // `length`
      next = await engine.step(token, { topK });
    }
    for (const frame of text.finish()) {
      pending.push({ frame: tokenFrame(frame.index, frame.token_id, frame.text), text: frame.text });
    }
    await flush();
    const decodeS = (performance.now() - firstAt) / 1000;
    const tokensPerS = tokenIds.length >= 2 && decodeS > 0 ? (tokenIds.length - 1) / decodeS : 0;
    return { tokenIds, promptTokens: prompt.length, finishReason, ttftMs, tokensPerS };
  }

  /** A token's bytes (control tokens have none), remembered: wllama answers each through its worker. */
  async #piece(token) {
    let bytes = this.#pieces.get(token);
    if (bytes === undefined) {
      bytes = this.#engine.isEndToken(token) ? new Uint8Array(0) : await this.#engine.detokenize([token]);
      this.#pieces.set(token, bytes);
    }
    return bytes;
  }

  async #logprobs(logits, token, top) {
    const pieces = new Map();
    const best = Array.from(logits.keys())
      .filter((t) => Number.isFinite(logits[t]))
      .sort((a, b) => logits[b] - logits[a] || a - b)
      .slice(0, top);
    for (const t of [token, ...best]) pieces.set(t, await this.#piece(t));
    return tokenLogprobs(logits, token, top, (t) => pieces.get(t));
  }

  /** Waits up to 10 s for the client's countersigned receipt and keeps its credit. */
  async #keepCountersigned(stream, receipt) {
    const payload = await stream.receivePayload(COUNTERSIGN_WAIT_MS).catch(() => null);
    if (payload !== null) {
      try {
        const body = acceptCountersigned(decodeCountersigned(payload), receipt);
        this.stats.countersigned += 1;
        this.stats.credits += body.amount;
      } catch {
        // Not the receipt this tab sent, or not signed by the client: nothing is kept.
      }
    }
    await stream.close().catch(() => {});
  }
}
