// Identity and signatures (docs/protocol.md, "Identity and peer ids" and "Signatures").
// A peer id is the base58btc text of the identity multihash of the libp2p PublicKey
// protobuf of an ed25519 key, so the key can be read back out of the id: a verifier
// needs no key exchange. Signatures are plain ed25519 over `domain ‖ UTF-8(body)`.

import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";

// protobuf PublicKey {1: Ed25519 (1), 2: 32 bytes}, inside an identity multihash (code 0, length 36).
const PEER_ID_PREFIX = Uint8Array.of(0x00, 0x24, 0x08, 0x01, 0x12, 0x20);
const BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const MAX_PEER_ID_CHARS = 128; // base58 decoding is quadratic: never decode a long string
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const utf8 = new TextEncoder();

export const NO_DOMAIN = "";
export const NODE_DOMAIN = "dinet-receipt/1 node\n";
export const CLIENT_DOMAIN = "dinet-receipt/1 client\n";
export const VERSIONS_DOMAIN = "dinet-versions/1\n";

/** The raw ed25519 public key of a 32-byte seed (an RFC 8032 private key, what identity.key holds). */
export function publicKeyOfSeed(seed) {
  if (seed.length !== 32) throw new RangeError(`an ed25519 seed is 32 bytes, not ${seed.length}`);
  return ed25519.getPublicKey(seed);
}

/** The libp2p PublicKey protobuf of a raw ed25519 key (36 bytes). */
export function publicKeyProtobuf(publicKey) {
  return concat(PEER_ID_PREFIX.subarray(2), publicKey);
}

/** The peer id (`12D3KooW…`) of a raw 32-byte ed25519 public key. */
export function peerIdOf(publicKey) {
  if (publicKey.length !== 32) throw new RangeError(`an ed25519 public key is 32 bytes, not ${publicKey.length}`);
  return base58Encode(concat(PEER_ID_PREFIX, publicKey));
}

/** The raw ed25519 public key inside a peer id; RangeError if it holds none. */
export function publicKeyOf(peerId) {
  if (typeof peerId !== "string" || peerId.length > MAX_PEER_ID_CHARS) throw new RangeError("not a peer id");
  const raw = base58Decode(peerId);
  const prefixed = raw.length === 38 && PEER_ID_PREFIX.every((byte, i) => raw[i] === byte);
  if (!prefixed) throw new RangeError(`${peerId} is not the peer id of an ed25519 key`);
  return raw.slice(6);
}

export function isPeerId(text) {
  try {
    publicKeyOf(text);
    return true;
  } catch {
    return false;
  }
}

/** The bytes a signature covers: the domain's bytes, then the body's UTF-8. */
export function signedBytes(body, domain = NO_DOMAIN) {
  return concat(utf8.encode(domain), utf8.encode(body));
}

/** The base64 signature by `seed` (32 bytes) of `domain` + `body`. */
export function signBody(body, seed, domain = NO_DOMAIN) {
  return toBase64(ed25519.sign(signedBytes(body, domain), seed));
}

/** Whether `signature` (base64) is `peerId`'s over `domain` + `body`; false for any malformed part. */
export function signedBy(peerId, body, signature, domain = NO_DOMAIN) {
  let raw, publicKey;
  try {
    raw = fromBase64(signature);
    publicKey = publicKeyOf(peerId);
  } catch {
    return false;
  }
  if (raw.length !== 64 || hasLoneSurrogate(body)) return false;
  try {
    // zip215 off: RFC 8032's strict rules, as the reference's OpenSSL checks them.
    return ed25519.verify(raw, signedBytes(body, domain), publicKey, { zip215: false });
  } catch {
    return false;
  }
}

export function sha256Hex(bytes) {
  return toHex(sha256(typeof bytes === "string" ? utf8.encode(bytes) : bytes));
}

export function toBase64(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** Base64 as the spec has it: standard alphabet, padded, nothing else. */
export function fromBase64(text) {
  if (typeof text !== "string" || !BASE64.test(text)) throw new RangeError("not canonical base64");
  return Uint8Array.from(atob(text), (char) => char.charCodeAt(0));
}

export function toHex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (!/^([0-9a-fA-F]{2})*$/.test(text)) throw new RangeError("not hex");
  return Uint8Array.from(text.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function base58Encode(bytes) {
  let number = 0n;
  for (const byte of bytes) number = (number << 8n) | BigInt(byte);
  let digits = "";
  while (number > 0n) {
    digits = BASE58[Number(number % 58n)] + digits;
    number /= 58n;
  }
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
  return "1".repeat(zeros) + digits;
}

function base58Decode(text) {
  let number = 0n;
  for (const char of text) {
    const digit = BASE58.indexOf(char);
    if (digit < 0) throw new RangeError(`${char} is not a base58 digit`);
    number = number * 58n + BigInt(digit);
  }
  const bytes = [];
  while (number > 0n) {
    bytes.unshift(Number(number & 0xffn));
    number >>= 8n;
  }
  let zeros = 0;
  while (text[zeros] === "1") zeros++;
  return Uint8Array.from([...new Array(zeros).fill(0), ...bytes]);
}

// A lone surrogate has no UTF-8: the reference refuses to verify such a body (TextEncoder
// would quietly write U+FFFD instead).
const hasLoneSurrogate = (text) => !text.isWellFormed();
