// A node's reading of an /dinet/infer/1 request, in the reference node's order
// (dinet.node.inference): frame size (too_large), decoding (bad_request), the model
// (unknown_model), this node's bounds (bad_request), then what its engine can do.

import { MAX_FRAME } from "./framing.js";
import { MalformedMessage, decodeRequest, errorFrame, promptChars, usesTools } from "./messages.js";

/** A request this node refuses: `code` is the spec's error code, `frame()` the error frame to send. */
export class Refusal extends Error {
  constructor(code, message) {
    super(message);
    this.name = "Refusal";
    this.code = code;
  }

  frame() {
    return errorFrame(this.code, this.message);
  }
}

/**
 * The decoded request in `payload` (the frame's bytes), or a Refusal. `node` says what this
 * node serves and allows: modelId, modelHash, maxTokens (≤ 4096), maxPromptChars
 * (≤ 64000), maxRequestBytes, nVocab (prefix tokens must be in the vocabulary), and what
 * its engine cannot do: grammar (no grammar engine in the tab) and rawLogits (false when
 * the engine gives probabilities only: then repetition_penalty cannot be applied).
 */
export function admitRequest(payload, node) {
  const { modelId, modelHash, maxTokens = 4096, maxPromptChars = 64_000, maxRequestBytes = MAX_FRAME } = node;
  if (payload.length > maxRequestBytes) {
    throw new Refusal("too_large", `a frame of ${payload.length} bytes, above ${maxRequestBytes}`);
  }
  let request;
  try {
    request = decodeRequest(payload);
  } catch (error) {
    if (error instanceof MalformedMessage) throw new Refusal("bad_request", error.message.slice(0, 300));
    throw error;
  }
  const wrongHash = request.model_hash !== null && request.model_hash !== modelHash;
  if (wrongHash || (request.model_id !== null && request.model_id !== modelId)) {
    throw new Refusal("unknown_model", `this node does not serve ${request.model_hash ?? request.model_id}`);
  }
  const params = request.params;
  if (params.max_tokens > maxTokens) {
    throw new Refusal("bad_request", `max_tokens ${params.max_tokens} above this node's limit of ${maxTokens}`);
  }
  const chars = promptChars(params);
  if (chars > maxPromptChars) {
    throw new Refusal("bad_request", `prompt of ${chars} characters above this node's limit of ${maxPromptChars}`);
  }
  if (node.nVocab !== undefined) {
    const outside = [...params.prefix_tokens, ...params.logit_bias.map(([token]) => token)].find(
      (t) => typeof t !== "number" || t < 0 || t >= node.nVocab,
    );
    if (outside !== undefined) throw new Refusal("bad_request", `token ${outside} is outside the vocabulary`);
  }
  if (usesTools(params)) {
    throw new Refusal("bad_request", "this node's engine declares no tool support: leave out tools, tool calls and tool messages");
  }
  if (params.grammar !== null && !node.grammar) {
    throw new Refusal("bad_request", "this node's engine cannot keep to a grammar");
  }
  if (params.repetition_penalty !== 1 && node.rawLogits === false) {
    throw new Refusal("bad_request", "this node's engine gives probabilities, not logits: no repetition_penalty");
  }
  return request;
}
