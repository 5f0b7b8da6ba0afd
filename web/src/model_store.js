// The tab's model store: a model's verified chunks, fetched over HTTP from the gateway
// (src/dinet/gateway/_chunks.py) and kept in the Origin Private File System, so a reload
// reads them back (and checks them again) instead of downloading.
//
//   OPFS  dinet-models/<model hash>/card.json    the signed model card, as served
//         dinet-models/<model hash>/<index>      chunk `index`, once it matched its hash
import { chunkHash, verifyCard } from "./model_card.js";

export const CHUNKS_PATH = "/api/chunks/1";
const ROOT = "dinet-models";
const ATTEMPTS = 3; // tries per chunk before giving up on the gateway
const PARALLEL = 4; // chunk downloads in flight

export class ModelStoreError extends Error {
  name = "ModelStoreError";
}

// The models the gateway can hand out: [{model_hash, model_id, version, file_size, chunks}].
export async function heldModels(base = "") {
  const response = await fetch(`${base}${CHUNKS_PATH}`, { cache: "no-store" });
  if (!response.ok) throw new ModelStoreError(`the gateway lists no models (HTTP ${response.status})`);
  return (await response.json()).models;
}

async function modelDir(modelHash) {
  const root = await navigator.storage.getDirectory();
  const models = await root.getDirectoryHandle(ROOT, { create: true });
  return models.getDirectoryHandle(modelHash, { create: true });
}

async function readFile(dir, name) {
  try {
    return await (await dir.getFileHandle(name)).getFile();
  } catch (error) {
    if (error.name === "NotFoundError") return null;
    throw error;
  }
}

async function writeFile(dir, name, data) {
  const handle = await dir.getFileHandle(name, { create: true });
  const writable = await handle.createWritable();
  await writable.write(data);
  await writable.close();
  return handle.getFile();
}

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store" }); // OPFS is the cache: a bad reply is never reused
  } catch (error) {
    throw new ModelStoreError(`${what}: ${error.message}`);
  }
  if (!response.ok) {
    let reason = `HTTP ${response.status}`;
    try {
      reason = (await response.json()).error?.message ?? reason;
    } catch {
      // not a JSON error body: the status says it
    }
    throw new ModelStoreError(`${what}: ${reason}`);
  }
  return response;
}

async function loadCard(dir, base, modelHash, stats) {
  const stored = await readFile(dir, "card.json");
  if (stored !== null) {
    try {
      return verifyCard(JSON.parse(await stored.text()), modelHash);
    } catch {
      stats.replaced.push("card"); // damaged in storage: fetched again below
    }
  }
  const response = await fetchOk(`${base}${CHUNKS_PATH}/${modelHash}/card`, "model card");
  const text = await response.text();
  const card = verifyCard(JSON.parse(text), modelHash);
  await writeFile(dir, "card.json", text);
  return card;
}

// Chunk `index` as a File in OPFS whose bytes match the card: the stored one if it
// still matches, else fetched (and refetched when a reply does not match, up to ATTEMPTS).
async function loadChunk(dir, base, card, index, stats) {
  const size = card.chunk_sizes[index];
  const hash = card.chunk_hashes[index];
  const name = String(index);
  const stored = await readFile(dir, name);
  if (stored !== null) {
    if (stored.size === size && chunkHash(new Uint8Array(await stored.arrayBuffer())) === hash) {
      stats.reused += 1;
      return stored;
    }
    stats.replaced.push(index);
  }
  const url = `${base}${CHUNKS_PATH}/${card.model_hash}/${index}`;
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    const bytes = new Uint8Array(await (await fetchOk(url, `chunk ${index}`)).arrayBuffer());
    stats.bytes += bytes.length;
    if (bytes.length === size && chunkHash(bytes) === hash) {
      stats.fetched += 1;
      return writeFile(dir, name, bytes);
    }
    stats.rejected.push(index);
  }
  throw new ModelStoreError(
    `chunk ${index} of model ${card.model_hash.slice(0, 16)}… did not match its hash in ${ATTEMPTS} downloads`,
  );
}

// The whole model file as one Blob (backed by the OPFS chunk files), every chunk verified.
// `onProgress({done, total})` is told after each chunk.
export async function openModel(modelHash, { base = "", onProgress = () => {} } = {}) {
  const stats = { fetched: 0, reused: 0, bytes: 0, rejected: [], replaced: [] };
  const dir = await modelDir(modelHash);
  const card = await loadCard(dir, base, modelHash, stats);
  const total = card.chunk_sizes.length;
  const files = new Array(total);
  let next = 0;
  let done = 0;
  let failed = false; // one chunk failing ends the download: the others stop taking work
  async function worker() {
    while (next < total && !failed) {
      const index = next++;
      try {
        files[index] = await loadChunk(dir, base, card, index, stats);
      } catch (error) {
        failed = true;
        throw error;
      }
      onProgress({ done: ++done, total });
    }
  }
  await Promise.all(Array.from({ length: Math.min(PARALLEL, total) }, worker));
  return { blob: new Blob(files), card, stats };
}

// Forget a stored model (all of it, or everything when `modelHash` is omitted).
export async function forgetModel(modelHash) {
  const root = await navigator.storage.getDirectory();
  try {
    if (modelHash === undefined) {
      await root.removeEntry(ROOT, { recursive: true });
    } else {
      const models = await root.getDirectoryHandle(ROOT);
      await models.removeEntry(modelHash, { recursive: true });
    }
  } catch (error) {
    if (error.name !== "NotFoundError") throw error;
  }
}
