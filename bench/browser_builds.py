"""wllama builds side by side in a browser tab, alternated with native llama.cpp.

wllama 2.4.0 (what web/ ships; 64-bit memory) against wllama 3's default build (64-bit
memory, JSPI) and its compat build (@wllama/wllama-compat: 32-bit memory, Asyncify), on
1 and N threads. The builds are installed with npm into a temporary directory (pinned
below; the npm registry must be reachable), bundled with web/'s esbuild beside the browser
node, and served by a `din node --api-port` whose chunks the tab loads the model from.
wllama 3 dropped the low-level API dinet's engine needs (tokenize, decode, getLogits), so
each build is timed through its own completion call (greedy, sampling in the
WebAssembly); 2.4.0 also through dinet's calls (decode, then getLogits(1)).
Decode tok/s of each tab's second answer, medians, ratios to native; one JSON line.

    .venv/bin/python bench/browser_builds.py [--runs 3] [--tokens 48] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from _tab_node import WEB, node_for_tabs
from browser import FLAGS, PROMPT, native_run, tok_s
from dinet.engine._paths import default_model_path
from dinet.engine.llama._llama_cpp import chat_formatter, load_llama

PACKAGES = {
    "w2": "npm:@wllama/wllama@2.4.0",
    "w3": "npm:@wllama/wllama@3.13.0",
    "w3compat": "npm:@wllama/wllama-compat@3.13.0",
}
WASM = {  # served path under builds/ -> installed file
    "w2/single-thread/wllama.wasm": "w2/esm/single-thread/wllama.wasm",
    "w2/multi-thread/wllama.wasm": "w2/esm/multi-thread/wllama.wasm",
    "w3/wllama.wasm": "w3/esm/wasm/wllama.wasm",
    "w3compat/wllama.wasm": "w3compat/wasm/wllama.wasm",
    "w3compat/wllama.js": "w3compat/wasm/wllama.js",
}
BUILDS = {
    "2.4.0": "wllama 2.4.0, decode + getLogits(1)",
    "2.4.0-sample": "wllama 2.4.0, decode + samplingSample",
    "2.4.0-completion": "wllama 2.4.0, createCompletion",
    "3.13.0": "wllama 3.13.0 default",
    "3.13.0-compat": "wllama 3.13.0 compat",
}
DECODE = """async ({modelHash, build, threads, prompt, tokens}) => {
  const dinet = await import('/browser/dinet-node.js');
  const builds = await import('/browser/builds/builds.js');
  const {blob} = await dinet.openModel(modelHash);
  return await builds.run({blob, engine: build, threads, prompt, tokens});
}"""


def bundle_builds(work: Path, out: Path) -> None:
    """The wllama builds installed in `work` and bundled with their wasm files into `out`."""
    work.mkdir(parents=True)
    package = {"name": "wllama-builds", "private": True, "type": "module", "dependencies": PACKAGES}
    (work / "package.json").write_text(json.dumps(package))
    npm = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"]
    subprocess.run(npm, cwd=work, check=True)
    shutil.copy(Path(__file__).with_name("_wllama_builds.js"), work / "builds.js")
    esbuild = WEB / "node_modules" / ".bin" / "esbuild"
    args = ["--bundle", "--format=esm", "--platform=browser", "--target=es2022", "--log-level=warning"]
    subprocess.run([str(esbuild), "builds.js", *args, f"--outfile={out / 'builds.js'}"], cwd=work, check=True)
    for served, installed in WASM.items():
        (out / served).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "node_modules" / installed, out / served)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48, help="greedy tokens per answer")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts for the tab")
    parser.add_argument("--builds", default=",".join(BUILDS), help="comma-separated: " + ", ".join(BUILDS))
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    builds = args.builds.split(",")
    llm = load_llama(default_model_path(), threads=1)
    formatter = chat_formatter(llm)
    assert formatter is not None
    prompt_text = str(formatter(messages=PROMPT).prompt)  # type: ignore[arg-type]
    prompt = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    names = ["native"] + [f"{build}@{n}" for n in threads for build in builds]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="dinet-bench-") as tmp, node_for_tabs(Path(tmp)) as (node, url):
        bundle_builds(Path(tmp) / "npm", Path(tmp) / "browser" / "builds")
        with sync_playwright() as playwright:
            chromium = shutil.which("chromium")
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
            try:
                page = browser.new_context().new_page()
                page.set_default_timeout(600_000)
                page.goto(url)
                for run in range(args.runs):
                    order = names[run % len(names) :] + names[: run % len(names)]  # who goes first
                    for name in order:
                        if name == "native":
                            native = native_run(llm, prompt, args.tokens)
                            results[name].append({"tok_s": tok_s(native), "threads": 1})
                        else:
                            build, n = name.split("@")
                            call = {"modelHash": node.model_hash, "build": build, "threads": int(n)}
                            r = page.evaluate(DECODE, {**call, "prompt": prompt_text, "tokens": args.tokens})
                            results[name].append({**r, "tok_s": 1000 * r["steps"] / r["ms"]})
                        print(f"run {run} {name}: {results[name][-1]['tok_s']:.1f} tok/s", flush=True)
                    page.reload()
            finally:
                browser.close()
    native_tok_s = statistics.median(r["tok_s"] for r in results["native"])
    rows = {}
    print(f"\n{'engine':<44} {'tok/s':>7} {'x native':>9}  notes")
    for name, runs in results.items():
        speed = statistics.median(r["tok_s"] for r in runs)
        if name == "native":
            label, notes = "native llama.cpp, 1 thread", ""
        else:
            build, n = name.split("@")
            ran = sorted({r["threads"] for r in runs})
            label = f"{BUILDS[build]}, {n} thread{'s' if n != '1' else ''}"
            notes = f"ran on {ran} threads" if ran != [int(n)] else ""
            if "decodeMs" in runs[0]:
                ms = [(r["decodeMs"] / r["steps"], r["logitsMs"] / r["steps"]) for r in runs]
                decode, logits = statistics.median(d for d, _ in ms), statistics.median(g for _, g in ms)
                notes += f"decode {decode:.1f} ms/token, then the next token {logits:.1f} ms"
            if any(r.get("compat") for r in runs):
                notes += " (compat build in use)"
        rows[name] = {"tok_s": round(speed, 2), "x_native": round(speed / native_tok_s, 3)}
        print(f"{label:<44} {speed:>7.1f} {speed / native_tok_s:>9.2f}  {notes}")
    print(json.dumps({"bench": "browser_builds", "runs": args.runs, "tokens": args.tokens, **rows}))


if __name__ == "__main__":
    main()
