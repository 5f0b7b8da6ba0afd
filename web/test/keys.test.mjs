// keys.json, and signatures over manifest.json, receipt.json, model_card.json, model_versions.json.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as keys from "../src/spec/keys.js";
import { fromHex, hex, vectors } from "../testing/vectors.mjs";

const KEYS = vectors("keys").keys;
const seedOf = (name) => fromHex(KEYS[name].seed);

test("every key's public key, protobuf, multihash and peer id come from its seed", () => {
  for (const [name, key] of Object.entries(KEYS)) {
    const publicKey = keys.publicKeyOfSeed(seedOf(name));
    assert.equal(hex(publicKey), key.public_key, name);
    assert.equal(hex(keys.publicKeyProtobuf(publicKey)), key.public_key_protobuf, name);
    assert.equal(keys.peerIdOf(publicKey), key.peer_id, name);
    assert.equal(hex(keys.publicKeyOf(key.peer_id)), key.public_key, name);
    assert.equal(key.peer_id_multihash, "0024" + key.public_key_protobuf);
  }
});

test("a peer id that holds no ed25519 key is refused", () => {
  const id = KEYS.node.peer_id;
  for (const wrong of [id.slice(0, -1), id + "1", id.replace("K", "0"), "Qm" + id.slice(2), "", "1".repeat(200)]) {
    assert.equal(keys.isPeerId(wrong), false, wrong);
  }
});

for (const [file, pick] of [
  ["manifest", (v) => [v]],
  ["model_card", (v) => [v]],
  ["model_versions", (v) => [v]],
  ["receipt", (v) => [v.node, v.client]],
]) {
  test(`${file}.json: signed bytes and signatures reproduced, verified, forgeries refused`, () => {
    for (const signed of pick(vectors(file))) {
      const seed = seedOf(signed.signer);
      const signer = KEYS[signed.signer].peer_id;
      const other = KEYS[signed.signer === "node" ? "client" : "node"].peer_id;
      assert.equal(hex(keys.signedBytes(signed.body, signed.domain)), signed.signed_bytes_hex);
      assert.equal(keys.signBody(signed.body, seed, signed.domain), signed.signature);
      assert.equal(keys.signedBy(signer, signed.body, signed.signature, signed.domain), true);
      assert.equal(keys.signedBy(other, signed.body, signed.signature, signed.domain), false, "another key");
      assert.equal(keys.signedBy(signer, signed.body + " ", signed.signature, signed.domain), false, "body changed");
      assert.equal(keys.signedBy(signer, signed.body, signed.signature, signed.domain + "x"), false, "domain");
      const flipped = keys.fromBase64(signed.signature);
      flipped[7] ^= 1;
      assert.equal(keys.signedBy(signer, signed.body, keys.toBase64(flipped), signed.domain), false, "bit flipped");
      const urlSafe = signed.signature.replaceAll("+", "-").replaceAll("/", "_");
      if (urlSafe !== signed.signature) assert.equal(keys.signedBy(signer, signed.body, urlSafe, signed.domain), false);
      assert.equal(keys.signedBy(signer, signed.body, signed.signature.replace(/=+$/, ""), signed.domain), false);
    }
  });
}
