// Numbers as the reference writes them: the layout pydantic gave for these doubles
// (measured with pydantic 2 in the project's environment), which JavaScript's String() does not.
import assert from "node:assert/strict";
import { test } from "node:test";
import { formatFloat } from "../src/spec/json.js";

const WRITTEN = [
  [1e16, "1e+16"],
  [1.5e16, "1.5e+16"],
  [123456789012345680, "1.2345678901234568e+17"],
  [1e15, "1000000000000000.0"],
  [9999999999999998, "9999999999999998.0"],
  [1e-5, "0.00001"],
  [1e-4, "0.0001"],
  [-0, "-0.0"],
  [5e-324, "5e-324"],
  [1.7976931348623157e308, "1.7976931348623157e+308"],
  [1 / 3, "0.3333333333333333"],
  [2e-5, "0.00002"],
  [1e-6, "1e-6"],
  [1e21, "1e+21"],
  [-2.5e-7, "-2.5e-7"],
  [100, "100.0"],
  [1795000000.25, "1795000000.25"],
];

test("doubles are written as the reference writes them", () => {
  for (const [x, text] of WRITTEN) assert.equal(formatFloat(x), text, String(x));
  assert.throws(() => formatFloat(NaN));
  assert.throws(() => formatFloat(Infinity));
});
