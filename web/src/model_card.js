// Model cards and model hashes (docs/protocol.md, "Model hashes and /dinet/chunks/1").
//
// A card is trusted only if its publisher's signature verifies, its chunk sizes add up
// to the file size, and the Merkle root of its chunk hashes is the model hash asked for.
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";

import { isPeerId, sha256Hex, signedBy } from "./spec/keys.js";

export const MAX_CHUNK = 1048576;
const MAX_CHUNKS = 8192;
const HEX64 = /^[0-9a-f]{64}$/;

export class CardError extends Error {
  name = "CardError";
}

// sha256 of a chunk, as the card writes it: 64 lower-case hex digits.
export const chunkHash = sha256Hex;

// The Merkle root over chunk hashes (hex in, hex out): adjacent pairs hashed as raw
// 32-byte digests, an odd last node carried up unchanged, no leaves: sha256 of nothing.
export function merkleRoot(hexLeaves) {
  if (hexLeaves.length === 0) return bytesToHex(sha256(new Uint8Array(0)));
  let level = hexLeaves.map(hexToBytes);
  while (level.length > 1) {
    const up = [];
    for (let i = 0; i < level.length; i += 2) {
      if (i + 1 === level.length) {
        up.push(level[i]);
      } else {
        const pair = new Uint8Array(64);
        pair.set(level[i], 0);
        pair.set(level[i + 1], 32);
        up.push(sha256(pair));
      }
    }
    level = up;
  }
  return bytesToHex(level[0]);
}

// The card in a signed envelope ({kind, body, signature}), checked; `modelHash` is
// the hash asked for. Returns the card body as an object.
export function verifyCard(envelope, modelHash) {
  if (envelope?.kind !== "model_card" || typeof envelope.body !== "string") {
    throw new CardError("not a model_card envelope");
  }
  let card;
  try {
    card = JSON.parse(envelope.body);
  } catch {
    throw new CardError("card body is not JSON");
  }
  if (!isPeerId(card.publisher)) throw new CardError(`publisher ${card.publisher} is not the peer id of an ed25519 key`);
  if (!signedBy(card.publisher, envelope.body, envelope.signature)) {
    throw new CardError("card signature does not verify"); // the empty domain: the body alone
  }
  const { chunk_sizes: sizes, chunk_hashes: hashes, chunk_size: limit } = card;
  if (!Array.isArray(sizes) || !Array.isArray(hashes) || sizes.length !== hashes.length) {
    throw new CardError("chunk sizes and hashes differ in number");
  }
  if (sizes.length > MAX_CHUNKS || !Number.isInteger(limit) || limit < 1 || limit > MAX_CHUNK) {
    throw new CardError("chunk count or chunk size out of range");
  }
  if (!sizes.every((n) => Number.isInteger(n) && n > 0 && n <= limit)) {
    throw new CardError("a chunk size is outside (0, chunk_size]");
  }
  if (sizes.reduce((a, b) => a + b, 0) !== card.file_size) {
    throw new CardError("chunk sizes do not add up to the file size");
  }
  if (!hashes.every((h) => HEX64.test(h)) || !HEX64.test(card.model_hash)) {
    throw new CardError("a hash is not 64 lower-case hex digits");
  }
  if (merkleRoot(hashes) !== card.model_hash || card.model_hash !== modelHash) {
    throw new CardError(`the card's chunk hashes do not give model hash ${modelHash}`);
  }
  return card;
}
