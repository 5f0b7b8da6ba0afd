// The browser node's entry point: what the gateway's page imports from /browser/dinet-node.js.
export const VERSION = "0.1.0";
export * as spec from "./spec/index.js";
export { Identity, loadIdentity, memoryStore, indexedDbStore } from "./identity.js";
export { FramedStream, Link, MANIFEST_PROTOCOL, openLink, registerHandler } from "./link.js";
export { Engine, loadEngine, canUseThreads, defaultThreads, WASM_PATHS } from "./engine.js";
export { openModel, heldModels, forgetModel, ModelStoreError, CHUNKS_PATH } from "./model_store.js";
export { verifyCard, merkleRoot, chunkHash, CardError } from "./model_card.js";
export { Contribution, INFER_PROTOCOL, contribute } from "./contribute.js";
// Keys for tests and for the identity module (which keeps one in IndexedDB).
export { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
