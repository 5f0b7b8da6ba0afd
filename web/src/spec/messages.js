// The messages of /dinet/infer/1 (docs/protocol.md, "The request", "The replies",
// "Receipts"): closed schemas, decoded strictly from a frame's payload and encoded as the
// reference encodes them. A request that does not decode is `bad_request` (MalformedMessage).

import { JsonError, decodeUtf8, parseJson } from "./json.js";
import {
  MalformedMessage,
  array,
  int,
  literal,
  nullable,
  num,
  object,
  str,
  tagged,
  tuple,
} from "./schema.js";

export { MalformedMessage };

export const MAX_PROMPT_CHARS = 64_000;
export const MAX_TOKENS_LIMIT = 4096;
export const MAX_RECEIPT_CHARS = 4096;
export const MAX_PIECE_BYTES = 256;
const HEX_PIECE = /^([0-9a-f]{2})*$/;
const CHANNEL = /^0x[0-9a-f]{64}$/;

export const ERROR_CODES = [
  "bad_request",
  "too_large",
  "unknown_model",
  "busy",
  "deadline",
  "rate_limited",
  "probation",
  "engine_crashed",
  "internal",
  "unknown_session",
  "wrong_span",
  "relay_failed",
  "payment_required",
];

const isNull = (v) => v === null;
const isEmpty = (v) => v.length === 0;

const TOOL_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export const ToolCall = object([
  ["id", str({ min: 1, max: 64 })],
  ["name", str({ pattern: TOOL_NAME })],
  ["arguments", str({ max: MAX_PROMPT_CHARS })],
]);

export const ChatMessage = object(
  [
    ["role", literal("system", "user", "assistant", "tool")],
    ["content", str({ max: MAX_PROMPT_CHARS })],
    ["tool_calls", array(ToolCall, { max: 16 }), { default: [], omit: isEmpty }],
    ["tool_call_id", nullable(str({ min: 1, max: 64 })), { default: null, omit: isNull }],
  ],
  (message, path) => {
    if (message.tool_calls.length > 0 && message.role !== "assistant") {
      throw new MalformedMessage(path, "only an assistant message makes tool calls");
    }
    if ((message.tool_call_id !== null) !== (message.role === "tool")) {
      throw new MalformedMessage(path, "a tool message, and only a tool message, names its tool_call_id");
    }
  },
);

/** A function offered to the model; `parameters` is the text of a JSON object (its schema). */
export const Tool = object(
  [
    ["name", str({ pattern: TOOL_NAME })],
    ["description", str({ max: 16_000 }), { default: "" }],
    ["parameters", str({ min: 2, max: 16_000 }), { default: "{}" }],
  ],
  (tool, path) => {
    let schema = null;
    try {
      schema = JSON.parse(tool.parameters);
    } catch {
      schema = null;
    }
    if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
      throw new MalformedMessage(path, "a tool's parameters are the text of a JSON object (a JSON schema)");
    }
  },
);

/** Whether the chat template must render tools: offered, called or answered. */
export const usesTools = (params) =>
  params.tools.length > 0 || (params.messages ?? []).some((m) => m.tool_calls.length > 0 || m.role === "tool");

export const GenerationParams = object(
  [
    ["messages", nullable(array(ChatMessage, { max: 256 })), { default: null }],
    ["prompt", nullable(str({ max: MAX_PROMPT_CHARS })), { default: null }],
    ["max_tokens", int({ ge: 1, le: MAX_TOKENS_LIMIT }), { default: 128 }],
    ["temperature", num({ ge: 0, le: 2 }), { default: 0 }],
    ["top_p", num({ gt: 0, le: 1 }), { default: 1 }],
    ["seed", int({ ge: 0, lt: 2n ** 63n }), { default: 0 }],
    ["stop", array(str({ min: 1, max: 64 }), { max: 4 }), { default: [] }],
    ["prefix_tokens", array(int(), { max: MAX_TOKENS_LIMIT }), { default: [] }],
    ["grammar", nullable(str({ min: 1, max: 64_000 })), { default: null, omit: isNull }],
    ["logit_bias", array(tuple(int({ ge: 0 }), num({ ge: -100, le: 100 })), { max: 300 }), { default: [], omit: isEmpty }],
    ["repetition_penalty", num({ gt: 0, le: 2 }), { default: 1, omit: (v) => v === 1 }],
    ["presence_penalty", num({ ge: -2, le: 2 }), { default: 0, omit: (v) => v === 0 }],
    ["frequency_penalty", num({ ge: -2, le: 2 }), { default: 0, omit: (v) => v === 0 }],
    ["min_p", num({ ge: 0, lt: 1 }), { default: 0, omit: (v) => v === 0 }],
    ["logprobs", nullable(int({ ge: 0, le: 20 })), { default: null, omit: isNull }],
    ["tools", array(Tool, { max: 32 }), { default: [], omit: isEmpty }],
  ],
  (params, path) => {
    if ((params.messages === null) === (params.prompt === null)) {
      throw new MalformedMessage(path, "give exactly one of messages or prompt");
    }
    if (params.tools.length > 0 && params.messages === null) {
      throw new MalformedMessage(path, "tools go with messages, not with a raw prompt");
    }
  },
);

export const InferRequest = object([
  ["kind", literal("infer"), { default: "infer" }],
  ["request_id", str({ min: 1, max: 64 })],
  ["model_id", nullable(str({ max: 128 })), { default: null }],
  ["model_hash", nullable(str({ max: 128 })), { default: null }],
  ["params", GenerationParams],
  ["deadline_ms", nullable(int({ ge: 1, le: 3_600_000 })), { default: null, omit: isNull }],
  // A payment channel (docs/incentives.md); the reference takes it, this page's table lacks it.
  ["channel", nullable(str({ pattern: CHANNEL })), { default: null, omit: isNull }],
]);

const TokenChoice = object([
  ["token_id", int({ ge: 0 })],
  ["piece", str({ max: 2 * MAX_PIECE_BYTES, pattern: HEX_PIECE })],
  ["logprob", num({ le: 0 })],
]);

export const TokenLogprobs = object([
  ["logprob", num({ le: 0 })],
  ["piece", str({ max: 2 * MAX_PIECE_BYTES, pattern: HEX_PIECE })],
  ["top", array(TokenChoice, { max: 20 }), { default: [] }],
]);

export const TokenFrame = object([
  ["kind", literal("token"), { default: "token" }],
  ["index", int({ ge: 0 })],
  ["token_id", int({ ge: 0 })],
  ["text", str()],
  ["logprobs", nullable(TokenLogprobs), { default: null, omit: isNull }],
]);

export const Usage = object([
  ["prompt_tokens", int({ ge: 0 })],
  ["completion_tokens", int({ ge: 0 })],
]);

export const SignedReceipt = object([
  ["kind", literal("receipt"), { default: "receipt" }],
  ["body", str({ max: MAX_RECEIPT_CHARS })],
  ["node_signature", str({ max: 256 })],
]);

const ChannelVoucher = object([
  ["channel", str({ pattern: CHANNEL })],
  ["amount", int({ ge: 0, lt: 2n ** 256n })],
  ["signature", str({ pattern: /^0x[0-9a-f]{130}$/ })],
]);

export const CountersignedReceipt = object([
  ["kind", literal("countersigned_receipt"), { default: "countersigned_receipt" }],
  ["body", str({ max: MAX_RECEIPT_CHARS })],
  ["node_signature", str({ max: 256 })],
  ["client_signature", str({ max: 256 })],
  ["voucher", nullable(ChannelVoucher), { default: null, omit: isNull }],
]);

export const EndFrame = object([
  ["kind", literal("end"), { default: "end" }],
  ["finish_reason", literal("stop", "length")],
  ["usage", Usage],
  ["ttft_ms", num({ ge: 0 })],
  ["tokens_per_s", num({ ge: 0 })],
  ["model_id", str(), { default: "" }],
  ["model_hash", str(), { default: "" }],
  ["receipt", nullable(SignedReceipt), { default: null }],
]);

export const ErrorFrame = object([
  ["kind", literal("error"), { default: "error" }],
  ["code", literal(...ERROR_CODES)],
  ["message", str({ max: 1000 })],
]);

export const QueuedFrame = object([
  ["kind", literal("queued"), { default: "queued" }],
  ["waiting", int({ ge: 0 })],
]);

export const InferReply = tagged({ token: TokenFrame, end: EndFrame, error: ErrorFrame, queued: QueuedFrame });

/** Decode a payload (bytes or text) with a schema; MalformedMessage for anything it refuses. */
export function decodeWith(schema, payload) {
  let value;
  try {
    value = parseJson(typeof payload === "string" ? payload : decodeUtf8(payload));
  } catch (error) {
    if (error instanceof JsonError || error instanceof TypeError) throw new MalformedMessage("", error.message);
    throw error;
  }
  return schema.read(value, "");
}

/** A message's JSON text, as the reference writes it. */
export const encodeWith = (schema, message) => schema.write(message);

export const decodeRequest = (payload) => decodeWith(InferRequest, payload);
export const decodeReply = (payload) => decodeWith(InferReply, payload);
export const decodeCountersigned = (payload) => decodeWith(CountersignedReceipt, payload);

/** The characters of the prompt (roles not counted), as `GenerationParams.prompt_chars`: the raw
 * prompt's, or all messages' contents, their tool calls' names and arguments, and the tools'
 * names, descriptions and parameters, in code points (so both counts agree). */
export function promptChars(params) {
  const count = (text) => [...text].length;
  const sum = (items, size) => items.reduce((n, item) => n + size(item), 0);
  if (params.prompt !== null) return count(params.prompt);
  const call = (c) => count(c.name) + count(c.arguments);
  const message = (m) => count(m.content) + sum(m.tool_calls, call);
  const tool = (t) => count(t.name) + count(t.description) + count(t.parameters);
  return sum(params.messages, message) + sum(params.tools, tool);
}

// ---- replies a node writes

export const tokenFrame = (index, tokenId, text, logprobs = null) =>
  TokenFrame.write({ kind: "token", index, token_id: tokenId, text, logprobs });

export const queuedFrame = (waiting) => QueuedFrame.write({ kind: "queued", waiting });

export function errorFrame(code, message) {
  if (!ERROR_CODES.includes(code)) throw new RangeError(`unknown error code ${code}`);
  return ErrorFrame.write({ kind: "error", code, message: [...message].slice(0, 1000).join("") });
}

/** The end frame. `receipt` is a signed receipt ({body, node_signature}) or null. */
export function endFrame({ finishReason, promptTokens, completionTokens, ttftMs, tokensPerS, modelId, modelHash, receipt = null }) {
  return EndFrame.write({
    kind: "end",
    finish_reason: finishReason,
    usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens },
    ttft_ms: ttftMs,
    tokens_per_s: tokensPerS,
    model_id: modelId,
    model_hash: modelHash,
    receipt: receipt && { kind: "receipt", ...receipt },
  });
}

/** The error frame a node answers a refused request with. */
export const badRequestFrame = (error) => errorFrame("bad_request", error.message);
