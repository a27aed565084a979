// V8 CPU profiles of the worker under `wrangler dev`, through its inspector port.
//   node scripts/profile.mjs record <inspector-port> <seconds> <out.cpuprofile>
//   node scripts/profile.mjs top <file> [rows]              self and inclusive time
//   node scripts/profile.mjs children <file> <regex> [rows] where a function's time goes
// scripts/bench-ingest.sh records one with BENCH_PROFILE=<file>.
import fs from "node:fs";

const [command, ...args] = process.argv.slice(2);

async function record(port, seconds, out) {
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  // wrangler's inspector proxy refuses a WebSocket without an allowed Origin.
  const ws = new WebSocket(targets[0].webSocketDebuggerUrl, { headers: { Origin: "http://localhost" } });
  let id = 0;
  const waiting = new Map();
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.id && waiting.has(msg.id)) {
      waiting.get(msg.id)(msg);
      waiting.delete(msg.id);
    }
  };
  const send = (method, params = {}) =>
    new Promise((resolve) => {
      waiting.set(++id, resolve);
      ws.send(JSON.stringify({ id, method, params }));
    });
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`inspector on port ${port} refused the connection`));
  });
  await send("Profiler.enable");
  await send("Profiler.setSamplingInterval", { interval: 200 });
  await send("Profiler.start");
  await new Promise((resolve) => setTimeout(resolve, Number(seconds) * 1000));
  const stopped = await send("Profiler.stop");
  fs.writeFileSync(out, JSON.stringify(stopped.result.profile));
  ws.close();
}

function load(file) {
  const profile = JSON.parse(fs.readFileSync(file));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children || []) parent.set(c, n.id);
  const hits = new Map();
  for (const s of profile.samples) hits.set(s, (hits.get(s) || 0) + 1);
  return { profile, byId, parent, hits, total: profile.samples.length };
}

// Rust symbols carry a hash suffix; the rest of the name is what a reader wants.
const name = (n) => (n.callFrame.functionName || "(anonymous)").replace(/::h[0-9a-f]{16}$/, "");
const share = (count, total) => `${((100 * count) / total).toFixed(1).padStart(5)} %`;
const table = (map, total, rows) =>
  [...map].sort((a, b) => b[1] - a[1]).slice(0, rows).map(([k, c]) => `${share(c, total)}  ${k}`).join("\n");

function top(file, rows = 40) {
  const { byId, parent, hits, total } = load(file);
  const self = new Map();
  const inclusive = new Map();
  for (const [id, count] of hits) {
    const own = name(byId.get(id));
    self.set(own, (self.get(own) || 0) + count);
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const n = name(byId.get(cur));
      if (!seen.has(n)) {
        seen.add(n);
        inclusive.set(n, (inclusive.get(n) || 0) + count);
      }
    }
  }
  console.log(`${total} samples\n--- self ---\n${table(self, total, rows)}\n--- inclusive ---\n${table(inclusive, total, rows)}`);
}

function children(file, pattern, rows = 25) {
  const { profile, byId, hits, total } = load(file);
  const re = new RegExp(pattern);
  const memo = new Map();
  const inclusive = (id) => {
    if (!memo.has(id)) {
      const n = byId.get(id);
      memo.set(id, (n.children || []).reduce((sum, c) => sum + inclusive(c), hits.get(id) || 0));
    }
    return memo.get(id);
  };
  const into = new Map();
  for (const n of profile.nodes) {
    if (!re.test(n.callFrame.functionName)) continue;
    into.set("(self)", (into.get("(self)") || 0) + (hits.get(n.id) || 0));
    for (const c of n.children || []) {
      const k = name(byId.get(c));
      into.set(k, (into.get(k) || 0) + inclusive(c));
    }
  }
  console.log(table(into, total, rows));
}

if (command === "record") {
  await record(...args);
  // The closed socket can keep the event loop alive for a while.
  process.exit(0);
} else if (command === "top") top(args[0], Number(args[1] || 40));
else if (command === "children") children(args[0], args[1], Number(args[2] || 25));
else {
  console.error("usage: profile.mjs record <port> <seconds> <out> | top <file> [rows] | children <file> <regex> [rows]");
  process.exit(2);
}
