// The browser node's entry point: what the gateway's page imports from /browser/dinet-node.js.
export const VERSION = "0.1.0";
export * as spec from "./spec/index.js";
export { Identity, loadIdentity, memoryStore, indexedDbStore } from "./identity.js";
