"""Tabs in headless Chromium that fetch the model from a gateway and run it in wllama."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright
from tests.gateway._gateway_helpers import CHROMIUM_FLAGS

LOAD_TIMEOUT_MS = 300_000  # a cold download and load on a busy 2-core machine

# In the page: the model fetched, verified and stored (openModel), then loaded in wllama.
CONTRIBUTE_JS = """async ({modelHash, threads}) => {
  const dinet = await import('/browser/dinet-node.js');
  const started = performance.now();
  const {blob, stats} = await dinet.openModel(modelHash);
  const stored = performance.now();
  const engine = await dinet.loadEngine(blob, {threads});
  window.engine = engine;
  return {stats, size: blob.size, threads: engine.threads, isolated: crossOriginIsolated,
          storeMs: stored - started, loadMs: performance.now() - stored};
}"""

# In the page, after CONTRIBUTE_JS: greedy decoding of each prompt (text as the node gets it).
GREEDY_JS = """async ({prompts, maxTokens}) => {
  const out = [];
  for (const prompt of prompts) {
    const ids = await window.engine.tokenize(prompt);
    const run = await window.engine.greedy(ids, maxTokens);
    const text = new TextDecoder().decode(await window.engine.detokenize(run.tokens));
    out.push({...run, prompt: ids, text});
  }
  return out;
}"""


@contextmanager
def chromium_browser(executable: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def tab(executable: str, url: str) -> Iterator[Page]:
    """A page on `url` in a fresh browser profile (empty OPFS)."""
    with chromium_browser(executable) as browser:
        page = browser.new_context().new_page()
        page.goto(url)
        yield page


def contribute(page: Page, model_hash: str, threads: int = 1) -> dict[str, Any]:
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    result: dict[str, Any] = page.evaluate(CONTRIBUTE_JS, {"modelHash": model_hash, "threads": threads})
    return result


def greedy(page: Page, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = page.evaluate(GREEDY_JS, {"prompts": prompts, "maxTokens": max_tokens})
    return answers
