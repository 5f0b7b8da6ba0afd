// The tab's identity: reloaded from its store, the same key for libp2p and for dinet signatures.
import assert from "node:assert/strict";
import { test } from "node:test";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";
import { Identity, loadIdentity, memoryStore } from "../src/identity.js";
import { NODE_DOMAIN, signedBy } from "../src/spec/keys.js";
import { fromHex, vectors } from "../testing/vectors.mjs";

const KEYS = vectors("keys").keys;
const R = vectors("receipt");

test("a stored identity reloads as the same peer; a new store makes a new one", async () => {
  const store = memoryStore();
  const first = await loadIdentity(store);
  const again = await loadIdentity(store);
  assert.equal(again.peerId, first.peerId);
  assert.notEqual((await loadIdentity(memoryStore())).peerId, first.peerId);
  assert.match(first.peerId, /^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$/);
});

test("the libp2p key is the dinet key: same peer id, and it signs what the spec says", async () => {
  const identity = await loadIdentity(memoryStore(fromHex(KEYS.node.seed)));
  assert.equal(identity.peerId, KEYS.node.peer_id);
  const privateKey = await identity.privateKey();
  assert.equal(peerIdFromPrivateKey(privateKey).toString(), KEYS.node.peer_id);
  assert.equal(identity.sign(NODE_DOMAIN, R.node.body), R.node.signature);
  assert.ok(signedBy(identity.peerId, R.node.body, identity.sign(NODE_DOMAIN, R.node.body), NODE_DOMAIN));
  assert.ok(!String(identity).includes(KEYS.node.seed));
  assert.throws(() => new Identity(new Uint8Array(31)), RangeError);
});
