// messages.json: every payload of the message sets the browser node reads decodes as the
// reference decodes it (defaults filled in, written back as the reference writes it), or
// is refused as bad_request.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseJson } from "../src/spec/json.js";
import { ManifestList, ManifestQuery } from "../src/spec/manifest.js";
import {
  InferReply,
  InferRequest,
  MalformedMessage,
  decodeRequest,
  decodeWith,
  errorFrame,
  promptChars,
  queuedFrame,
  tokenFrame,
} from "../src/spec/messages.js";
import { comparable, exactVectors, vectors } from "../testing/vectors.mjs";

const SCHEMAS = {
  infer_request: InferRequest,
  infer_reply: InferReply,
  manifest_query: ManifestQuery,
  manifest_reply: ManifestList,
};
// Protocols a browser node neither serves nor asks (it holds whole models, not stages; it
// downloads models over HTTP; native peers verify it, it verifies nobody).
const NOT_IN_THE_BROWSER = new Set(["verify_request", "verify_reply", "shard_request", "shard_reply", "chunk_query", "chunk_reply"]);

const CASES = vectors("messages").cases;
const EXACT = exactVectors("messages").cases;

test("every message set in messages.json is read here or named as not the browser's", () => {
  const sets = new Set(CASES.map((c) => c.decoder));
  for (const set of sets) assert.ok(set in SCHEMAS || NOT_IN_THE_BROWSER.has(set), set);
});

CASES.forEach((c, i) => {
  if (!(c.decoder in SCHEMAS)) return;
  test(`messages.json ${c.decoder}: ${c.why}`, () => {
    const schema = SCHEMAS[c.decoder];
    const payload = new TextEncoder().encode(c.payload);
    if (!c.valid) {
      assert.throws(() => decodeWith(schema, payload), MalformedMessage);
      return;
    }
    const decoded = decodeWith(schema, payload);
    const written = schema.write(decoded);
    assert.deepEqual(comparable(parseJson(written)), comparable(EXACT[i].decoded));
    assert.deepEqual(decodeWith(schema, written), decoded, "what is written reads back the same");
  });
});

test("the request's payload text is not JSON.parse's: integers stay exact, lone surrogates and BOMs refused", () => {
  const seed = decodeRequest('{"request_id":"r","params":{"prompt":"x","seed":9223372036854775807}}').params.seed;
  assert.equal(seed, 9223372036854775807n);
  for (const bad of [
    '{"request_id":"\\ud800","params":{"prompt":"x"}}',
    '\ufeff{"request_id":"r","params":{"prompt":"x"}}',
    '{"request_id":"r","params":{"prompt":"x","seed":5e0}}',
    '{"request_id":"r","params":{"prompt":"x","temperature":Infinity}}',
    '{"request_id":"r","params":{"prompt":"x","stop":["\u0001a\t"]}}'.replace("\\t", "\t"),
    '{"request_id":"r","params":{"prompt":"x"}} x',
  ]) {
    assert.throws(() => decodeRequest(bad), MalformedMessage, bad);
  }
  assert.throws(() => decodeRequest(Uint8Array.of(0x7b, 0xff, 0x7d)), MalformedMessage, "invalid UTF-8");
  const emoji = decodeRequest(`{"request_id":"${"😀".repeat(64)}","params":{"prompt":"x"}}`);
  assert.equal(emoji.request_id.length, 128, "64 characters, 128 UTF-16 units");
  assert.equal(decodeRequest('{"request_id":"\\ud83d\\ude00","params":{"prompt":"x"}}').request_id, "😀");
});

test("tool definitions and calls count towards the prompt's characters, as the reference counts them", () => {
  // The same payload as tests/wire/test_messages.py's TOOL_TURNS, and the same count.
  const payload =
    '{"request_id":"r","params":{"messages":[' +
    '{"role":"user","content":"héllo"},' +
    '{"role":"assistant","content":"","tool_calls":[{"id":"c1","name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}]},' +
    '{"role":"tool","content":"18 °C","tool_call_id":"c1"}],' +
    '"tools":[{"name":"get_weather","description":"The weather 😀","parameters":"{\\"type\\":\\"object\\"}"}]}}';
  assert.equal(promptChars(decodeRequest(payload).params), 78);
});

test("reply frames a node writes read back as the reference reads them", () => {
  const token = tokenFrame(5, 9, 'é"\n');
  assert.equal(token, '{"kind":"token","index":5,"token_id":9,"text":"é\\"\\n"}');
  assert.equal(queuedFrame(2), '{"kind":"queued","waiting":2}');
  assert.equal(errorFrame("busy", "full"), '{"kind":"error","code":"busy","message":"full"}');
  assert.throws(() => errorFrame("teapot", ""), RangeError);
  assert.equal(decodeWith(InferReply, token).text, 'é"\n');
});
