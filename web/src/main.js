// The browser node's entry point: what the gateway's page imports from /browser/dinet-node.js.
export const VERSION = "0.1.0";
export * as spec from "./spec/index.js";
export { Identity, loadIdentity, memoryStore, indexedDbStore } from "./identity.js";
export { FramedStream, Link, MANIFEST_PROTOCOL, openLink, registerHandler } from "./link.js";
// Keys for tests and for the identity module (which keeps one in IndexedDB).
export { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
