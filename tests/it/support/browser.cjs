// A minimal browser for end-to-end tests of the pixel script: one page view per run,
// with the cookie jar and localStorage kept in a state file between runs (the same
// browser coming back). It loads /v1/pixel.js from the worker, runs the merchant's
// snippet and queued calls, then the script, and enforces CORS on its requests as a
// browser would. Prints {beacons, cookies} as JSON.
//
// node browser.cjs <state.json> <page url> <script url> <pixel key> [calls as JSON]
"use strict";
const fs = require("fs");
const vm = require("vm");

const [statePath, pageUrl, scriptUrl, pixelKey, callsJson] = process.argv.slice(2);
const calls = JSON.parse(callsJson || "[]");
const state = fs.existsSync(statePath)
  ? JSON.parse(fs.readFileSync(statePath, "utf8"))
  : { cookies: [], storage: {} };
const page = new URL(pageUrl);
const FOREVER = 8.64e15;

function domainMatches(domain, host) {
  return host === domain || host.endsWith("." + domain);
}

const document = {
  get cookie() {
    return state.cookies
      .filter((c) => c.expires > Date.now() && domainMatches(c.domain, page.hostname))
      .map((c) => c.name + "=" + c.value)
      .join("; ");
  },
  set cookie(text) {
    const [pair, ...attributes] = text.split(";").map((s) => s.trim());
    const eq = pair.indexOf("=");
    const name = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    let domain = page.hostname;
    let maxAge = null;
    for (const attribute of attributes) {
      const [k, v] = attribute.split("=");
      if (/^domain$/i.test(k)) domain = v.replace(/^\./, "").toLowerCase();
      if (/^max-age$/i.test(k)) maxAge = Number(v);
    }
    // A browser refuses a foreign domain and a public suffix (here: any single label).
    if (!domainMatches(domain, page.hostname)) return;
    if (!domain.includes(".") && domain !== page.hostname) return;
    state.cookies = state.cookies.filter((c) => !(c.name === name && c.domain === domain));
    if (maxAge === null || maxAge > 0) {
      const expires = maxAge === null ? FOREVER : Date.now() + maxAge * 1000;
      state.cookies.push({ name, value, domain, expires });
    }
  },
  title: "Test page",
  addEventListener: () => {},
  currentScript: {
    src: scriptUrl,
    getAttribute: (name) =>
      name === "data-key" ? pixelKey : name === "data-consent" ? process.env.PIXEL_CONSENT || null : null,
  },
};

const beacons = [];
const pending = [];
function browserFetch(url, init) {
  const headers = Object.assign({}, init.headers, {
    origin: page.origin,
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) TrackLayerE2E/1.0",
  });
  // The script must never let the page's URL leave as Referer.
  if (init.referrerPolicy !== "no-referrer") throw new Error("beacon without referrerPolicy no-referrer");
  const request = fetch(url, { method: init.method, body: init.body, headers }).then(async (response) => {
    const allowOrigin = response.headers.get("access-control-allow-origin");
    beacons.push({ url, status: response.status, body: JSON.parse(init.body), allow_origin: allowOrigin, answer: await response.text() });
    // Without CORS approval the page only sees a network error.
    if (allowOrigin !== page.origin) throw new TypeError("Failed to fetch (CORS)");
    return { ok: response.ok, status: response.status };
  });
  pending.push(request.catch(() => {}));
  return request;
}

async function main() {
  const scriptResponse = await fetch(scriptUrl);
  if (!scriptResponse.ok || !/javascript/.test(scriptResponse.headers.get("content-type") || "")) {
    throw new Error("pixel.js: HTTP " + scriptResponse.status + " " + scriptResponse.headers.get("content-type"));
  }
  const script = await scriptResponse.text();
  const window = vm.createContext({
    document,
    location: page,
    crypto: globalThis.crypto,
    fetch: browserFetch,
    navigator: {},
    history: { pushState() {}, replaceState() {} },
    addEventListener: () => {},
    URLSearchParams,
    localStorage: {
      getItem: (k) => (k in state.storage ? state.storage[k] : null),
      setItem: (k, v) => { state.storage[k] = String(v); },
      removeItem: (k) => { delete state.storage[k]; },
    },
    console,
  });
  window.window = window;
  // The snippet's first tag, then the page's own calls, then the async script.
  vm.runInContext(
    "window.tracklayer=window.tracklayer||function(){(tracklayer.q=tracklayer.q||[]).push(arguments)};",
    window,
  );
  for (const call of calls) window.tracklayer(...call);
  vm.runInContext(script, window);
  while (pending.length) await pending.shift();
  fs.writeFileSync(statePath, JSON.stringify(state));
  process.stdout.write(JSON.stringify({ beacons, cookies: state.cookies }));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err));
  process.exit(1);
});
