// Receipts (docs/protocol.md, "Receipts"): what a node served a client, signed by the node
// in its end frame and countersigned by the client on the same stream.

import { sha256 } from "@noble/hashes/sha2.js";
import { CLIENT_DOMAIN, NODE_DOMAIN, sha256Hex, signBody, signedBy, toHex } from "./keys.js";
import { MalformedMessage, decodeWith } from "./messages.js";
import { int, literal, num, object, str } from "./schema.js";

const HEX64 = /^[0-9a-f]{64}$/;

export const ReceiptBody = object([
  ["version", literal("dinet-receipt/1"), { default: "dinet-receipt/1" }],
  ["request_id", str({ min: 1, max: 64 })],
  ["request_hash", str({ pattern: HEX64 })],
  ["model_hash", str({ min: 1, max: 128 })],
  ["node", str({ min: 1, max: 128 })],
  ["client", str({ min: 1, max: 128 })],
  ["prompt_tokens", int({ ge: 0, le: 1_000_000 })],
  ["completion_tokens", int({ ge: 0, le: 1_000_000 })],
  ["first_index", int({ ge: 0, le: 1_000_000 })],
  ["price_per_prompt_token", num({ ge: 0, le: 1e6 })],
  ["price_per_token", num({ ge: 0, le: 1e6 })],
  ["amount", num({ ge: 0 })],
  ["output_hash", str({ pattern: HEX64 })],
  ["issued_at", num()],
]);

/** A receipt that cannot be taken: malformed, inconsistent or not signed by its parties. */
export class BadReceipt extends Error {
  name = "BadReceipt";
}

/** The credits a receipt is worth: exactly this expression, in doubles, in this order. */
export const charge = (promptTokens, completionTokens, pricePrompt, price) =>
  promptTokens * pricePrompt + completionTokens * price;

/** sha256 over the token ids, each a 4-byte unsigned big-endian integer. */
export function outputHash(tokenIds) {
  const bytes = new Uint8Array(4 * tokenIds.length);
  const view = new DataView(bytes.buffer);
  tokenIds.forEach((id, i) => view.setUint32(4 * i, id));
  return toHex(sha256(bytes));
}

/** sha256 of the exact payload bytes of the client's infer frame. */
export const requestHash = (payload) => sha256Hex(payload);

/** A receipt's id: sha256 of its body's UTF-8 bytes. */
export const receiptId = (body) => sha256Hex(body);

/**
 * The receipt a node signs at the end of an answer: `body` (its JSON text, signed once and
 * sent as is) and `node_signature`. `tokenIds` are the tokens this node sent, from
 * `firstIndex` (the number of prefix tokens).
 */
export function signReceipt(seed, fields) {
  const { requestId, requestPayload, modelHash, node, client, promptTokens, tokenIds, firstIndex } = fields;
  const { pricePerPromptToken, pricePerToken, issuedAt } = fields;
  const body = ReceiptBody.write({
    version: "dinet-receipt/1",
    request_id: requestId,
    request_hash: requestHash(requestPayload),
    model_hash: modelHash,
    node,
    client,
    prompt_tokens: promptTokens,
    completion_tokens: tokenIds.length,
    first_index: firstIndex,
    price_per_prompt_token: pricePerPromptToken,
    price_per_token: pricePerToken,
    amount: charge(promptTokens, tokenIds.length, pricePerPromptToken, pricePerToken),
    output_hash: outputHash(tokenIds),
    issued_at: issuedAt,
  });
  return { body, node_signature: signBody(body, seed, NODE_DOMAIN) };
}

/** The client's countersignature over a node's signed receipt. */
export function countersign(signed, seed) {
  return {
    kind: "countersigned_receipt",
    body: signed.body,
    node_signature: signed.node_signature,
    client_signature: signBody(signed.body, seed, CLIENT_DOMAIN),
    voucher: null,
  };
}

/** The body, if well formed, self-consistent and signed by its `node`; else BadReceipt. */
export function verifyNodeSignature(signed) {
  const body = parseBody(signed.body);
  if (!signedBy(body.node, signed.body, signed.node_signature, NODE_DOMAIN)) {
    throw new BadReceipt(`receipt for ${body.request_id}: node signature does not match ${body.node}`);
  }
  return body;
}

/** Both signatures and the amount checked; BadReceipt otherwise. */
export function verifyCountersigned(receipt) {
  const body = verifyNodeSignature(receipt);
  if (!signedBy(body.client, receipt.body, receipt.client_signature, CLIENT_DOMAIN)) {
    throw new BadReceipt(`receipt for ${body.request_id}: client signature does not match ${body.client}`);
  }
  return body;
}

/**
 * What a node checks of the countersigned receipt a client sends back: that body and node
 * signature are the ones it sent, and that the client's signature verifies.
 */
export function acceptCountersigned(receipt, sent) {
  if (receipt.body !== sent.body || receipt.node_signature !== sent.node_signature) {
    throw new BadReceipt("the countersigned receipt is not the one this node sent");
  }
  return verifyCountersigned(receipt);
}

function parseBody(text) {
  let body;
  try {
    body = decodeWith(ReceiptBody, text);
  } catch (error) {
    if (error instanceof MalformedMessage) throw new BadReceipt(`malformed receipt: ${error.message}`);
    throw error;
  }
  if (body.node === body.client) throw new BadReceipt("a receipt's node and client must differ");
  const expected = charge(body.prompt_tokens, body.completion_tokens, body.price_per_prompt_token, body.price_per_token);
  if (body.amount !== expected) {
    throw new BadReceipt(`receipt for ${body.request_id} claims ${body.amount}, its counts give ${expected}`);
  }
  return body;
}
