// JSON as the spec reads and writes it (docs/protocol.md, Conventions).
//
// JSON.parse cannot be used to read messages: it forgets whether a number was written
// `5` or `5.0` (integers refuse the second), it rounds integers past 2^53 (a seed goes to
// 2^63 - 1), and it takes lone surrogate escapes. `parseJson` keeps every number's text
// as a `JsonNumber` for the schema to judge. `encodeJson` writes what the reference
// (pydantic) writes, so a body we sign reads exactly like a native node's.

export class JsonError extends Error {}

/** A JSON number as written: `text` is its lexeme, `integer` whether it has no fraction or exponent. */
export class JsonNumber {
  constructor(text) {
    this.text = text;
    this.integer = /^-?(0|[1-9][0-9]*)$/.test(text);
  }
}

const WHITESPACE = new Set([" ", "\t", "\n", "\r"]);
const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const MAX_DEPTH = 64;

/** The value of one JSON text; objects are null-prototype objects (a repeated name keeps its last value). */
export function parseJson(text) {
  let at = 0;
  const fail = (why) => {
    throw new JsonError(`${why} at character ${at}`);
  };
  const skip = () => {
    while (at < text.length && WHITESPACE.has(text[at])) at++;
  };
  const literal = (word, value) => {
    if (text.startsWith(word, at)) {
      at += word.length;
      return value;
    }
    return fail("not JSON");
  };
  const string = () => {
    at++; // the opening quote
    let out = "";
    for (;;) {
      const char = text[at];
      if (char === undefined) fail("unterminated string");
      if (char === '"') {
        at++;
        return out;
      }
      if (char < " ") fail("a control character in a string");
      if (char !== "\\") {
        // Lone surrogates cannot reach here: the text came from a UTF-8 decoder.
        out += char;
        at++;
        continue;
      }
      const code = text[at + 1];
      if (code in ESCAPES) {
        out += ESCAPES[code];
        at += 2;
        continue;
      }
      if (code !== "u") fail("a bad escape");
      const unit = hex4(at + 2);
      at += 6;
      if (unit >= 0xd800 && unit <= 0xdbff && text.startsWith("\\u", at)) {
        const low = hex4(at + 2);
        if (low >= 0xdc00 && low <= 0xdfff) {
          out += String.fromCharCode(unit, low);
          at += 6;
          continue;
        }
      }
      if (unit >= 0xd800 && unit <= 0xdfff) fail("a lone surrogate escape");
      out += String.fromCharCode(unit);
    }
  };
  const hex4 = (from) => {
    const digits = text.slice(from, from + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(digits)) fail("a bad \\u escape");
    return parseInt(digits, 16);
  };
  const value = (depth) => {
    if (depth > MAX_DEPTH) fail("nested too deep");
    skip();
    const char = text[at];
    if (char === "{") {
      at++;
      const out = Object.create(null);
      skip();
      if (text[at] === "}") {
        at++;
        return out;
      }
      for (;;) {
        skip();
        if (text[at] !== '"') fail("a member name must be a string");
        const name = string();
        skip();
        if (text[at] !== ":") fail("':' expected");
        at++;
        out[name] = value(depth + 1);
        skip();
        if (text[at] === ",") {
          at++;
          continue;
        }
        if (text[at] === "}") {
          at++;
          return out;
        }
        fail("',' or '}' expected");
      }
    }
    if (char === "[") {
      at++;
      const out = [];
      skip();
      if (text[at] === "]") {
        at++;
        return out;
      }
      for (;;) {
        out.push(value(depth + 1));
        skip();
        if (text[at] === ",") {
          at++;
          continue;
        }
        if (text[at] === "]") {
          at++;
          return out;
        }
        fail("',' or ']' expected");
      }
    }
    if (char === '"') return string();
    if (char === "t") return literal("true", true);
    if (char === "f") return literal("false", false);
    if (char === "n") return literal("null", null);
    NUMBER.lastIndex = at;
    const match = NUMBER.exec(text);
    if (!match) return fail("not JSON");
    at += match[0].length;
    return new JsonNumber(match[0]);
  };
  const out = value(0);
  skip();
  if (at !== text.length) fail("text after the JSON value");
  return out;
}

/** The text of UTF-8 bytes, refusing invalid UTF-8 and a byte order mark. */
export function decodeUtf8(bytes) {
  const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  if (text.startsWith("\ufeff")) throw new JsonError("a byte order mark");
  return text;
}

/** A double as the reference writes it (Rust's ryu through pydantic-core): `1.0`, `0.00002`,
 * `1e-6`, `1e+16`, `1.5e-7`. JavaScript's own `String(x)` differs (`1`, `0.000001`, `1e+21`),
 * so the digits come from JavaScript (both give the shortest round-trip digits) and the
 * layout from ryu's rules. */
export function formatFloat(x) {
  if (!Number.isFinite(x)) throw new JsonError(`${x} is not JSON`);
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  const [mantissa, exponent] = Math.abs(x).toExponential().split("e");
  const digits = mantissa.replace(".", "");
  const point = Number(exponent) + 1; // digits[0] stands for 10^(point - 1)
  if (digits === "0") return `${sign}0.0`;
  if (point >= digits.length && point <= 16) return sign + digits + "0".repeat(point - digits.length) + ".0";
  if (point > 0 && point <= 16) return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
  if (point > -5 && point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  const tail = digits.length > 1 ? `.${digits.slice(1)}` : "";
  return `${sign}${digits[0]}${tail}e${point > 0 ? "+" : ""}${point - 1}`;
}

/** A string as JSON (JSON.stringify escapes exactly what the reference escapes; non-ASCII stays raw). */
export function formatString(text) {
  return JSON.stringify(text);
}
