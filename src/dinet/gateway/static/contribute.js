// "Contribute this tab": the switch that makes this tab a node of the network (the browser
// node is web/src/contribute.js, served at /browser/). Shown only beside a node that takes
// tabs (GET /api/browser), with what it costs and what the tab has done.

const section = document.getElementById("contribute");
const toggle = document.getElementById("contribute-switch");
const cost = document.getElementById("contribute-cost");
const status = document.getElementById("contribute-status");
const done = document.getElementById("contribute-done");
let contribution = null;

const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

function missing() {
  if (typeof WebAssembly !== "object") return "this browser has no WebAssembly";
  if (!navigator.storage?.getDirectory) return "this browser has no Origin Private File System to keep the model in";
  if (!window.indexedDB) return "this browser has no IndexedDB to keep the tab's key in";
  return null;
}

async function show() {
  const entry = await fetch("/api/browser", { cache: "no-store" });
  if (!entry.ok) return; // no node beside this gateway: nothing to contribute to
  const lacking = missing();
  if (lacking) {
    toggle.disabled = true;
    status.textContent = `Cannot contribute: ${lacking}.`;
  } else {
    const models = await fetch("/api/chunks/1").then((r) => (r.ok ? r.json() : { models: [] }));
    const model = models.models[0];
    if (model) {
      const threads = window.crossOriginIsolated ? "threads allowed" : "one thread (the page is not cross-origin isolated)";
      cost.textContent = `Downloads ${model.model_id} (${mib(model.file_size)}) once, keeps it in this browser, and uses about ${mib(model.file_size * 1.5)} of memory and ${threads} while serving.`;
    }
  }
  section.hidden = false; // shown once it says what it costs
}

function report(stats) {
  const speed = contribution.service.speed;
  done.textContent =
    `Peer ${contribution.peerId.slice(-8)} · ${speed.tokensPerS.toFixed(1)} tok/s measured · ` +
    `${stats.served} requests served · ${stats.tokens} tokens · ${stats.credits.toFixed(4)} credits earned`;
}

toggle.addEventListener("change", async () => {
  toggle.disabled = true;
  try {
    if (toggle.checked) {
      const node = await import("/browser/dinet-node.js");
      contribution = await node.contribute({
        onStatus: (text) => (status.textContent = `${text}…`),
        onProgress: ({ done: got, total }) => (status.textContent = `fetching the model: ${got}/${total} chunks`),
      });
      status.textContent = "Serving: other people's requests now reach this tab.";
      contribution.service.listeners.add(report);
      report(contribution.service.stats);
    } else {
      await contribution?.stop();
      contribution = null;
      status.textContent = "Stopped.";
    }
  } catch (error) {
    status.textContent = `Could not contribute: ${error.message}`;
    toggle.checked = false;
    contribution = null;
  } finally {
    toggle.disabled = false;
  }
});

show().catch((error) => (status.textContent = `Could not ask the gateway: ${error.message}`));
