// Signed capability manifests (docs/protocol.md, "/dinet/manifest/1"): what a node offers,
// signed by its own key with the empty domain.

import { JsonNumber } from "./json.js";
import { signBody, signedBy } from "./keys.js";
import { MalformedMessage, decodeWith } from "./messages.js";
import { array, bool, int, literal, nullable, num, object, str, tuple } from "./schema.js";

export const MANIFEST_TTL_S = 120;
export const MAX_MANIFEST_LIFETIME_S = 300;
export const MAX_CLOCK_SKEW_S = 60;
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const isNull = (v) => v === null;

export const ModelOffer = object([
  ["model_id", str({ min: 1, max: 128 })],
  ["model_hash", str({ min: 1, max: 128 })],
  ["quantization", str({ max: 32 })],
  ["context", int({ ge: 1 })],
  ["layers", tuple(int(), int())],
  ["stage", bool, { default: false }],
  ["n_layers", nullable(int({ ge: 1 })), { default: null }],
  ["task", literal("generate", "embed"), { default: "generate", omit: (v) => v === "generate" }],
  ["dimensions", nullable(int({ ge: 1 })), { default: null, omit: isNull }],
  ["tools", bool, { default: false, omit: (v) => !v }],
]);

const Coordinates = object([
  ["vector", array(num({ ge: -100_000, le: 100_000 }), { min: 4, max: 4 })],
  ["height", num({ ge: 0, le: 100_000 })],
  ["error", num({ ge: 0, le: 1.5 })],
]);

const PaymentTerms = object([
  ["chain_id", int({ ge: 1 })],
  ["contract", str({ pattern: ADDRESS })],
  ["payee", str({ pattern: ADDRESS })],
  ["wei_per_credit", int({ ge: 0, lt: 2n ** 128n })],
  ["required", bool, { default: false }],
  ["token", nullable(str({ pattern: ADDRESS })), { default: null, omit: isNull }],
]);

export const Manifest = object([
  ["peer_id", str({ min: 1, max: 128 })],
  ["version", str({ max: 32 })],
  ["region", str({ max: 64 })],
  ["addrs", array(str(), { max: 16 })],
  ["models", array(ModelOffer, { max: 32 })],
  ["max_concurrent", int({ ge: 1 })],
  ["tokens_per_s", num({ ge: 0 })],
  ["ttft_ms", num({ ge: 0 })],
  ["price_per_token", num({ ge: 0 })],
  ["load", object([["active", int({ ge: 0 })], ["queued", int({ ge: 0 })]])],
  ["issued_at", num()],
  ["expires_at", num()],
  ["price_per_prompt_token", num({ ge: 0 }), { default: 0 }],
  ["reach", literal("public", "private", "unknown"), { default: "unknown" }],
  ["coords", nullable(Coordinates), { default: null, omit: isNull }],
  ["payment", nullable(PaymentTerms), { default: null, omit: isNull }],
]);

export const SignedManifest = object([
  ["kind", literal("manifest"), { default: "manifest" }],
  ["body", str({ max: 16_384 })],
  ["signature", str({ max: 256 })],
]);

export const ManifestQuery = object([
  ["kind", literal("manifest_query"), { default: "manifest_query" }],
  ["include_known", bool, { default: true }],
  ["model_id", nullable(str({ max: 128 })), { default: null }],
  ["model_hash", nullable(str({ max: 128 })), { default: null }],
  ["limit", int({ ge: 0, le: 255 }), { default: 32 }],
]);

export const ManifestList = object([
  ["kind", literal("manifests"), { default: "manifests" }],
  ["manifests", array(SignedManifest, { max: 256 })],
]);

export class ManifestError extends Error {
  name = "ManifestError";
}

/**
 * The signed manifest of a node: `fields` are the body's members by their wire names
 * (defaults as in the spec's table). Returns {kind, body, signature}; its payload is
 * `SignedManifest.write(result)`.
 */
export function signManifest(seed, fields) {
  const body = Manifest.write(Manifest.read(toJsonValue(fields)));
  return { kind: "manifest", body, signature: signBody(body, seed) };
}

/** The manifest inside a signed one, or ManifestError if forged, malformed or expired at `now` (seconds). */
export function verifyManifest(signed, now = Date.now() / 1000) {
  let manifest;
  try {
    manifest = decodeWith(Manifest, signed.body);
  } catch (error) {
    if (error instanceof MalformedMessage) throw new ManifestError(`malformed manifest: ${error.message}`);
    throw error;
  }
  if (!signedBy(manifest.peer_id, signed.body, signed.signature)) {
    throw new ManifestError(`manifest signature does not match peer ${manifest.peer_id}`);
  }
  if (manifest.expires_at <= now) throw new ManifestError(`manifest of ${manifest.peer_id} expired`);
  if (manifest.issued_at > now + MAX_CLOCK_SKEW_S) throw new ManifestError(`manifest of ${manifest.peer_id} is issued in the future`);
  if (manifest.expires_at - manifest.issued_at > MAX_MANIFEST_LIFETIME_S) {
    throw new ManifestError(`manifest of ${manifest.peer_id} claims too long a lifetime`);
  }
  return manifest;
}

// The caller's fields go through the schema a reader uses, so a node never signs a manifest
// its readers refuse. Numbers become JsonNumbers for the schema to judge.
function toJsonValue(value) {
  if (typeof value === "bigint" || (typeof value === "number" && Number.isFinite(value))) {
    return new JsonNumber(String(value));
  }
  if (Array.isArray(value)) return value.map(toJsonValue);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJsonValue(v)]));
  }
  return value;
}
