// Runs web/src/model_card.js on the spec's vectors and prints what it made of them (JSON),
// for tests/browser/test_model_card_vectors.py to compare.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("../..", import.meta.url));
const { verifyCard, merkleRoot, chunkHash } = await import(`${repo}web/src/model_card.js`);
const vectors = JSON.parse(readFileSync(`${repo}docs/vectors/model_card.json`));
const hashes = JSON.parse(readFileSync(`${repo}docs/vectors/hashes.json`));

const card = verifyCard(JSON.parse(vectors.payload), vectors.model_hash);
const file = Buffer.from(vectors.file_hex, "hex");
const refusals = vectors.refused.map((r) => {
  try {
    verifyCard(JSON.parse(r.payload), vectors.model_hash);
    return null;
  } catch (error) {
    return error.name;
  }
});
let wrongHash = null;
try {
  verifyCard(JSON.parse(vectors.payload), "0".repeat(64));
} catch (error) {
  wrongHash = error.name;
}
console.log(
  JSON.stringify({
    model_id: card.model_id,
    chunk_hashes: vectors.chunk_spans.map(([offset, size]) => chunkHash(file.subarray(offset, offset + size))),
    card_chunk_hashes: card.chunk_hashes,
    refusals,
    wrong_hash: wrongHash,
    roots: hashes.merkle.map((m) => merkleRoot(m.leaves)),
  }),
);
