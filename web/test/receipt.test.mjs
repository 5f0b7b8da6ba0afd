// receipt.json and manifest.json: a node's receipt and manifest built byte for byte, verified, refusals refused.
import assert from "node:assert/strict";
import { test } from "node:test";
import { publicKeyOfSeed } from "../src/spec/keys.js";
import { SignedManifest, signManifest, verifyManifest, ManifestError } from "../src/spec/manifest.js";
import { CountersignedReceipt, decodeCountersigned, decodeReply, decodeRequest, endFrame } from "../src/spec/messages.js";
import * as receipts from "../src/spec/receipt.js";
import { fromHex, vectors } from "../testing/vectors.mjs";

const KEYS = vectors("keys").keys;
const NODE = fromHex(KEYS.node.seed);
const CLIENT = fromHex(KEYS.client.seed);
const R = vectors("receipt");

test("receipt.json: the node's receipt and end frame, and the client's countersignature, byte for byte", () => {
  const request = decodeRequest(new TextEncoder().encode(R.request_payload));
  assert.equal(receipts.requestHash(R.request_payload), R.request_hash);
  assert.equal(receipts.outputHash(R.token_ids), R.output_hash);
  assert.equal(receipts.charge(31, R.token_ids.length, 1e-6, 2e-5), R.amount);
  const end = decodeReply(R.end_payload);
  const signed = receipts.signReceipt(NODE, {
    requestId: request.request_id,
    requestPayload: R.request_payload,
    modelHash: request.model_hash,
    node: KEYS.node.peer_id,
    client: KEYS.client.peer_id,
    promptTokens: end.usage.prompt_tokens,
    tokenIds: R.token_ids,
    firstIndex: request.params.prefix_tokens.length,
    pricePerPromptToken: 1e-6,
    pricePerToken: 2e-5,
    issuedAt: 1795000000,
  });
  assert.equal(signed.body, R.node.body);
  assert.equal(signed.node_signature, R.node.signature);
  assert.equal(receipts.receiptId(signed.body), R.receipt_id);
  const frame = endFrame({
    finishReason: "length",
    promptTokens: 31,
    completionTokens: request.params.prefix_tokens.length + R.token_ids.length,
    ttftMs: 41.5,
    tokensPerS: 88.25,
    modelId: request.model_id,
    modelHash: request.model_hash,
    receipt: signed,
  });
  assert.equal(frame, R.end_payload);
  const both = receipts.countersign(signed, CLIENT);
  assert.equal(both.client_signature, R.client.signature);
  assert.equal(CountersignedReceipt.write(both), R.countersigned_payload);
  const body = receipts.acceptCountersigned(decodeCountersigned(R.countersigned_payload), signed);
  assert.equal(body.amount, R.amount);
});

test("receipt.json: every refused countersigned receipt is refused", () => {
  assert.equal(R.refused.length, 4);
  for (const refusal of R.refused) {
    const receipt = decodeCountersigned(refusal.payload);
    assert.throws(() => receipts.verifyCountersigned(receipt), receipts.BadReceipt, refusal.why);
  }
});

test("a countersignature over another body than the node sent is refused", () => {
  const signed = { body: R.node.body, node_signature: R.node.signature };
  const other = { ...signed, body: R.node.body.replace('"prompt_tokens":31', '"prompt_tokens":30') };
  assert.throws(() => receipts.acceptCountersigned(receipts.countersign(other, CLIENT), signed), receipts.BadReceipt);
});

const M = vectors("manifest");

test("manifest.json: the signed manifest built from its fields, byte for byte, and verified", () => {
  const fields = JSON.parse(M.body);
  const signed = signManifest(NODE, fields);
  assert.equal(signed.body, M.body);
  assert.equal(signed.signature, M.signature);
  assert.equal(SignedManifest.write(signed), M.payload);
  const manifest = verifyManifest(signed, M.now);
  assert.equal(manifest.peer_id, KEYS.node.peer_id);
  assert.ok(publicKeyOfSeed(NODE));
});

test("manifest.json: every refused manifest is refused", () => {
  assert.equal(M.refused.length, 7);
  for (const refusal of M.refused) {
    const signed = JSON.parse(refusal.payload);
    assert.throws(() => verifyManifest(signed, refusal.now ?? M.now), ManifestError, refusal.why);
  }
});

test("a node cannot sign a manifest its readers would refuse", () => {
  const fields = { ...JSON.parse(M.body), tokens_per_s: -1 };
  assert.throws(() => signManifest(NODE, fields), /tokens_per_s/);
  assert.throws(() => signManifest(NODE, { ...JSON.parse(M.body), surprise: 1 }), /surprise/);
});
