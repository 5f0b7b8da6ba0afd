// The tab's identity: one ed25519 key, kept in IndexedDB so a reloaded tab is the same
// peer (same peer id, same standing in other peers' ledgers). What is kept is the 32-byte
// seed, as a native node's identity.key holds it. The same key is the libp2p node's (its
// Noise handshake proves the peer id that receipts name) and signs manifests and receipts.

import { generateKeyPairFromSeed } from "@libp2p/crypto/keys";
import { peerIdOf, publicKeyOfSeed, signBody } from "./spec/keys.js";

/** One identity: `seed`, `publicKey` (raw 32 bytes), `peerId` (12D3KooW…). */
export class Identity {
  #privateKey = null;

  constructor(seed) {
    if (!(seed instanceof Uint8Array) || seed.length !== 32) throw new RangeError("an ed25519 seed is 32 bytes");
    this.seed = seed;
    this.publicKey = publicKeyOfSeed(seed);
    this.peerId = peerIdOf(this.publicKey);
  }

  /** The base64 signature of `domain` + `body` (see spec/keys.js for the domains). */
  sign(domain, body) {
    return signBody(body, this.seed, domain);
  }

  /** The key as a libp2p PrivateKey, for `createLibp2p({ privateKey })`. */
  async privateKey() {
    this.#privateKey ??= await generateKeyPairFromSeed("Ed25519", this.seed);
    return this.#privateKey;
  }

  toString() {
    return `Identity(${this.peerId})`; // never the seed
  }
}

/** The identity in `store`, made (from the platform's random source) on first use. */
export async function loadIdentity(store = indexedDbStore()) {
  const seed = await store.getOrCreate(() => crypto.getRandomValues(new Uint8Array(32)));
  return new Identity(seed);
}

/** A store held in memory (node tests; a tab that may not use IndexedDB). */
export function memoryStore(seed = null) {
  return {
    async getOrCreate(make) {
      seed ??= make();
      return seed;
    },
  };
}

/** The seed in IndexedDB (database "dinet", object store "identity", key "node-seed"). Read and,
 * if absent, written in one transaction, so two tabs opening at once end with one key. */
export function indexedDbStore({ database = "dinet", store = "identity", key = "node-seed" } = {}) {
  const open = () =>
    new Promise((resolve, reject) => {
      const request = indexedDB.open(database, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(store);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  return {
    async getOrCreate(make) {
      const db = await open();
      try {
        return await new Promise((resolve, reject) => {
          const transaction = db.transaction(store, "readwrite");
          const objects = transaction.objectStore(store);
          let seed = null;
          const read = objects.get(key);
          read.onsuccess = () => {
            seed = read.result instanceof Uint8Array && read.result.length === 32 ? read.result : null;
            if (seed === null) {
              seed = make();
              objects.put(seed, key);
            }
          };
          transaction.oncomplete = () => resolve(seed);
          transaction.onerror = () => reject(transaction.error);
          transaction.onabort = () => reject(transaction.error);
        });
      } finally {
        db.close();
      }
    },
  };
}
