// Helpers of web/test, kept out of it so `node --test web/test/` runs only tests.
// The spec's test vectors (docs/vectors/*.json), read with the spec's own JSON reader where
// numbers must keep their exact text (a seed past 2^53, 1.0 against 1).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { JsonNumber, parseJson } from "../src/spec/json.js";

const HERE = fileURLToPath(new URL("../../docs/vectors/", import.meta.url));

/** A vector file as plain JSON (numbers as JavaScript numbers). */
export const vectors = (name) => JSON.parse(readFileSync(`${HERE}${name}.json`, "utf8"));

/** A vector file with every number a JsonNumber. */
export const exactVectors = (name) => parseJson(readFileSync(`${HERE}${name}.json`, "utf8"));

/** A value with JsonNumbers made comparable: integers as BigInts, others as {float: x}. */
export function comparable(value) {
  if (value instanceof JsonNumber) return value.integer ? BigInt(value.text) : { float: Number(value.text) };
  if (Array.isArray(value)) return value.map(comparable);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, comparable(v)]));
  }
  return value;
}

export const hex = (bytes) => Buffer.from(bytes).toString("hex");
export const fromHex = (text) => new Uint8Array(Buffer.from(text, "hex"));
