// text.json: token bytes in, token frames out, answer text.
import assert from "node:assert/strict";
import { test } from "node:test";
import { CompletionText, Utf8Decoder } from "../src/spec/text.js";
import { fromHex, vectors } from "../testing/vectors.mjs";

const CASES = vectors("text").cases;

for (const c of CASES) {
  test(`text.json: ${c.why}`, () => {
    const completion = new CompletionText(c.stops);
    for (const prefix of c.prefix_hex) completion.prime(fromHex(prefix));
    let answer = "";
    let stopped = false;
    for (const token of c.tokens) {
      const out = completion.push(token.index, token.token_id, fromHex(token.bytes_hex));
      assert.deepEqual(out.frames, token.releases, `after token ${token.index}`);
      answer += out.frames.map((f) => f.text).join("");
      stopped = out.stopped;
      if (stopped) break;
    }
    assert.equal(stopped, c.stopped);
    const atEnd = stopped ? [] : completion.finish();
    assert.deepEqual(atEnd, c.finish_releases);
    answer += atEnd.map((f) => f.text).join("");
    assert.equal(answer, c.answer);
  });
}

test("invalid UTF-8 is dropped where Python's errors='ignore' drops it, U+FFFD kept", () => {
  const cases = [
    ["efbfbd", "\ufffd"], // a real U+FFFD in the text stays
    ["e241", "A"], // a broken sequence, then a byte that starts afresh
    ["f08041", "A"], // f0 80 is no sequence: both dropped
    ["eda080", ""], // an encoded surrogate
    ["c0af", ""], // an overlong slash
    ["f4908080", ""], // past U+10FFFF
    ["f09f988061", "😀a"],
  ];
  for (const [bytes, text] of cases) {
    const decoder = new Utf8Decoder();
    assert.equal(decoder.decode(fromHex(bytes)) + decoder.decode(new Uint8Array(0), true), text, bytes);
  }
});
