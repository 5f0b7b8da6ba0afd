// Bundles the browser node into the directory the gateway serves at /browser/
// (`node build.mjs OUTDIR`; `make browser` runs it at set-up), with wllama's WebAssembly
// files beside it, so a tab loads everything from its gateway.
import { build } from "esbuild";
import { cpSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error("usage: node build.mjs OUTDIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.js")],
  outfile: join(out, "dinet-node.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  sourcemap: true,
  logLevel: "warning",
});
const wasm = join(here, "node_modules", "@wllama", "wllama", "esm");
for (const flavour of ["single-thread", "multi-thread"]) {
  mkdirSync(join(out, "wllama", flavour), { recursive: true });
  cpSync(join(wasm, flavour, "wllama.wasm"), join(out, "wllama", flavour, "wllama.wasm"));
}
