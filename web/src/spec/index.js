// The dinet spec in JavaScript: what the browser node (and its tests in Chromium) use.
export * from "./keys.js";
export * from "./sampler.js";
export { Adjuster, tokenLogprobs } from "./adjust.js";
export { CompletionText, Utf8Decoder } from "./text.js";
export * from "./messages.js";
export * from "./receipt.js";
export * from "./manifest.js";
export * from "./framing.js";
export * from "./swim.js";
export { Refusal, admitRequest } from "./infer.js";
export { parseJson, formatFloat, JsonNumber, JsonError } from "./json.js";
