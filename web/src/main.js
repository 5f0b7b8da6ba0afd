// The browser node's entry point: what the gateway's page imports from /browser/dinet-node.js.
export const VERSION = "0.1.0";
export { Engine, loadEngine, canUseThreads, defaultThreads, WASM_PATHS } from "./engine.js";
export { openModel, heldModels, forgetModel, ModelStoreError, CHUNKS_PATH } from "./model_store.js";
export { verifyCard, merkleRoot, chunkHash, CardError } from "./model_card.js";
