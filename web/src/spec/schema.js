// Closed message schemas: each type reads a parsed JSON value (spec/json.js) strictly and
// writes a value back as the reference writes it (members in table order, defaults
// filled in, optional members left out where the spec says so). One description serves
// both directions, as the reference's pydantic models do.

import { JsonNumber, formatFloat, formatString } from "./json.js";

/** A message that does not decode: the node answers `bad_request`. `where` is the member's path. */
export class MalformedMessage extends Error {
  constructor(where, why) {
    super(`invalid message at ${where || "message"}: ${why}`);
    this.name = "MalformedMessage";
    this.code = "bad_request";
    this.where = where;
  }
}

const bad = (path, why) => {
  throw new MalformedMessage(path, why);
};
const codePoints = (text) => {
  let n = 0;
  for (const _ of text) n++;
  return n;
};

function bounds(path, value, { ge, gt, le, lt }) {
  if (ge !== undefined && !(value >= ge)) bad(path, `must be >= ${ge}`);
  if (gt !== undefined && !(value > gt)) bad(path, `must be > ${gt}`);
  if (le !== undefined && !(value <= le)) bad(path, `must be <= ${le}`);
  if (lt !== undefined && !(value < lt)) bad(path, `must be < ${lt}`);
}

/** A string of `min`-`max` code points (not UTF-16 units), optionally matching `pattern`. */
export const str = ({ min = 0, max = Infinity, pattern } = {}) => ({
  read(value, path) {
    if (typeof value !== "string") bad(path, "a string is due");
    const n = value.length > max * 2 ? Infinity : codePoints(value);
    if (n < min || n > max) bad(path, `${min}-${max} characters`);
    if (pattern && !pattern.test(value)) bad(path, `must match ${pattern}`);
    return value;
  },
  write: (value) => formatString(value),
});

/** An integer: no fraction, no exponent. A Number when exact, a BigInt beyond 2^53. Bounds may be BigInts. */
export const int = (limits = {}) => ({
  read(value, path) {
    if (!(value instanceof JsonNumber) || !value.integer) bad(path, "an integer is due");
    const big = BigInt(value.text);
    const asBig = Object.fromEntries(Object.entries(limits).map(([k, v]) => [k, BigInt(v)]));
    bounds(path, big, asBig);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  },
  write(value) {
    if (typeof value !== "bigint" && !Number.isSafeInteger(value)) throw new TypeError(`${value} is not an integer`);
    return String(value);
  },
});

/** A number (an IEEE double): any JSON number, never NaN or an infinity. */
export const num = (limits = {}) => ({
  read(value, path) {
    if (!(value instanceof JsonNumber)) bad(path, "a number is due");
    const x = Number(value.text);
    if (!Number.isFinite(x)) bad(path, "must be finite");
    bounds(path, x, limits);
    return x;
  },
  write: (value) => formatFloat(value),
});

export const bool = {
  read(value, path) {
    if (value !== true && value !== false) bad(path, "true or false is due");
    return value;
  },
  write: (value) => (value ? "true" : "false"),
};

/** One of the given strings. */
export const literal = (...choices) => ({
  read(value, path) {
    if (!choices.includes(value)) bad(path, `one of ${choices.join(", ")} is due`);
    return value;
  },
  write: (value) => formatString(value),
});

export const nullable = (type) => ({
  read: (value, path) => (value === null ? null : type.read(value, path)),
  write: (value) => (value === null ? "null" : type.write(value)),
});

export const array = (type, { min = 0, max = Infinity } = {}) => ({
  read(value, path) {
    if (!Array.isArray(value)) bad(path, "an array is due");
    if (value.length < min || value.length > max) bad(path, `${min}-${max} items`);
    return value.map((item, i) => type.read(item, `${path}.${i}`));
  },
  write: (value) => `[${value.map((item) => type.write(item)).join(",")}]`,
});

/** A fixed-length array of the given types, e.g. `[start, stop)`. */
export const tuple = (...types) => ({
  read(value, path) {
    if (!Array.isArray(value) || value.length !== types.length) bad(path, `${types.length} items are due`);
    return value.map((item, i) => types[i].read(item, `${path}.${i}`));
  },
  write: (value) => `[${value.map((item, i) => types[i].write(item)).join(",")}]`,
});

/**
 * A closed object. `fields` lists [name, type, options] in the order the reference writes
 * them; options: `default` (the member is optional), `omit(value)` (left out of the text
 * when true), and `check(value, path)` runs on the whole object after its members.
 */
export const object = (fields, check) => {
  const names = new Set(fields.map(([name]) => name));
  return {
    fields,
    read(value, path = "") {
      if (value === null || typeof value !== "object" || Array.isArray(value)) bad(path, "an object is due");
      for (const name of Object.keys(value)) {
        if (!names.has(name)) bad(join(path, name), "unknown member");
      }
      const out = {};
      for (const [name, type, options = {}] of fields) {
        if (name in value) out[name] = type.read(value[name], join(path, name));
        else if ("default" in options) out[name] = options.default;
        else bad(join(path, name), "missing");
      }
      if (check) check(out, path);
      return Object.freeze(out);
    },
    write(value) {
      const members = [];
      for (const [name, type, options = {}] of fields) {
        const member = name in value ? value[name] : options.default;
        if (member === undefined) throw new TypeError(`${name} is required`);
        if (options.omit && options.omit(member)) continue;
        members.push(`${formatString(name)}:${type.write(member)}`);
      }
      return `{${members.join(",")}}`;
    },
  };
};

/** One of several objects, told apart by their `kind` member (which each must have). */
export const tagged = (byKind) => ({
  read(value, path = "") {
    const kind = value !== null && typeof value === "object" ? value.kind : undefined;
    if (kind === undefined) bad(join(path, "kind"), "missing");
    if (typeof kind !== "string" || !Object.hasOwn(byKind, kind)) bad(join(path, "kind"), "unknown kind");
    return byKind[kind].read(value, path);
  },
  write: (value) => byKind[value.kind].write(value),
});

const join = (path, name) => (path ? `${path}.${name}` : name);
