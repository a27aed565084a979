// Real-browser end-to-end steps, in headless Chromium (Debian's `chromium`) driven by
// puppeteer-core. Two modes, each printing one JSON object:
//
//   node chromium.cjs journey <worker url> <snippet file> <email> <out dir> <site port>
//     Serves a small merchant site on a free loopback port (its pages carry the
//     merchant's real pixel snippet and a permissive Referrer-Policy), then a visitor
//     views pricing, three docs pages (the third by pushState), starts the demo form
//     and leaves it, views a competitor page, and identifies on the welcome page.
//     Prints {visitor_id, site, worker_requests: [{url, method, referer, body}]}.
//
//   node chromium.cjs pages <worker url> <api key> <visitor id> <out dir>
//     Signs in to /app with a wrong key, then the right one; reads the ranked list
//     and the visitor's timeline; saves screenshots (laptop and phone).
//     Prints {wrong_key: {status, text}, cookie, home: {...}, visitor: {...}, screenshots}.
"use strict";
const http = require("http");
const fs = require("fs");
const os = require("os");
const path = require("path");
const puppeteer = require("puppeteer-core");

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tl-chromium-"));
  // Without the background-networking flags Chromium keeps trying Google's hosts,
  // which this machine's closed network refuses.
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--user-data-dir=" + profile,
    ],
  });
}

function sitePage(snippet, title, body) {
  return "<!doctype html><html><head><meta charset=\"utf-8\"><title>" + title + "</title>" +
    snippet + "</head><body><h1>" + title + "</h1>" + body + "</body></html>";
}

function startSite(snippet, email, port) {
  const pages = {
    "/pricing": sitePage(snippet, "Pricing", "<p>Plans</p>"),
    "/docs/a": sitePage(snippet, "Docs: quick start", "<p>A</p>"),
    "/docs/b": sitePage(snippet, "Docs: webhooks", "<p>B</p>"),
    "/demo": sitePage(snippet, "Book a demo",
      "<form data-tl-form=\"demo\" action=\"/thanks\" method=\"post\">" +
      "<label>Work email <input id=\"work-email\" name=\"email\" type=\"email\"></label>" +
      "<button type=\"submit\">Book</button></form>"),
    "/vs/competitor": sitePage(snippet, "Us vs Competitor", "<p>Compare</p>"),
    "/welcome": sitePage(snippet, "Welcome",
      "<script>tracklayer('identify', { email: " + JSON.stringify(email) + " });</script>"),
  };
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, "http://site").pathname;
    const page = pages[pathname];
    // A permissive page policy: only the pixel's own no-referrer keeps URLs private.
    res.writeHead(page ? 200 : 404, {
      "content-type": "text/html; charset=utf-8",
      "referrer-policy": "no-referrer-when-downgrade",
    });
    res.end(page || "not found");
  });
  return new Promise((resolve) => server.listen(Number(port), "127.0.0.1", () => resolve(server)));
}

async function journey(workerUrl, snippetFile, email, outDir, sitePort) {
  const snippet = fs.readFileSync(snippetFile, "utf8");
  const server = await startSite(snippet, email, sitePort);
  // `localhost`: the merchant's allowed origin is http://localhost:<port>.
  const site = "http://localhost:" + server.address().port;
  const browser = await launch();
  const page = await browser.newPage();
  const workerRequests = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(workerUrl)) return;
    const headers = request.headers();
    workerRequests.push({
      url: request.url(), method: request.method(),
      referer: headers.referer || headers.Referer || null,
      body: request.postData() || null,
    });
  });
  const idle = () => page.waitForNetworkIdle({ idleTime: 400, timeout: 15000 });
  const visit = async (url) => { await page.goto(url, { waitUntil: "networkidle0" }); await idle(); };

  await visit(site + "/pricing?gclid=Cj0KCQiA-intent-gclid&utm_source=linkedin&email=leak%40example.com#plans");
  await visit(site + "/docs/a");
  await visit(site + "/docs/b");
  // A single-page-app navigation to the third docs page.
  await page.evaluate(() => history.pushState({}, "", "/docs/c"));
  await idle();
  await visit(site + "/demo");
  await page.focus("#work-email");
  await page.keyboard.type("someone@");
  await idle();
  // Leaves without submitting.
  await visit(site + "/vs/competitor");
  await visit(site + "/welcome");
  await page.screenshot({ path: path.join(outDir, "merchant-site-" + sitePort + ".png") });
  const cookies = await browser.cookies();
  const visitor = cookies.find((c) => c.name === "_tl_vid");
  await browser.close();
  server.close();
  return { visitor_id: visitor ? visitor.value : null, site, worker_requests: workerRequests };
}

async function pages(workerUrl, apiKey, visitorId, outDir) {
  const browser = await launch();
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const screenshots = [];
  const shot = async (name) => {
    const file = path.join(outDir, name);
    await page.screenshot({ path: file, fullPage: true });
    screenshots.push(file);
  };

  const first = await page.goto(workerUrl + "/app", { waitUntil: "networkidle0" });
  const csp = first.headers()["content-security-policy"] || null;
  await shot("sign-in.png");
  await page.type("#api_key", "tlk_0123456789abcdef_not-the-secret");
  const [refused] = await Promise.all([
    page.waitForNavigation({ waitUntil: "networkidle0" }),
    page.click("button[type=submit]"),
  ]);
  const wrongKey = {
    status: refused.status(),
    text: await page.$eval("[role=alert]", (el) => el.textContent),
    cookies: (await browser.cookies()).length,
  };

  await page.type("#api_key", apiKey);
  await Promise.all([
    page.waitForNavigation({ waitUntil: "networkidle0" }),
    page.click("button[type=submit]"),
  ]);
  const cookie = (await browser.cookies()).find((c) => c.name === "tl_session") || null;
  if (!(await page.$("#seed"))) {
    throw new Error("not signed in; the page says: " + (await page.content()).slice(0, 2000));
  }
  const rows = (selector) => page.$$eval(selector + " tbody tr", (trs) =>
    trs.map((tr) => Array.from(tr.querySelectorAll("td")).map((td) => td.textContent.trim())));
  const home = {
    url: page.url(),
    title: await page.title(),
    ranked: await rows("#ranked"),
    queue: await rows("#queue"),
    seed: await page.$eval("#seed", (el) => el.textContent),
    scripts_ran: await page.$$eval("time[title]", (els) => els.length),
  };
  await shot("intent-overview.png");

  await Promise.all([
    page.waitForNavigation({ waitUntil: "networkidle0" }),
    page.click("a[href='/app/visitors/" + visitorId + "']"),
  ]);
  const visitor = {
    url: page.url(),
    score: await page.$eval("#score", (el) => el.textContent.trim()),
    timeline: await page.$$eval("#timeline li p", (els) => els.map((el) => el.textContent.trim())),
  };
  await shot("visitor-timeline.png");
  await page.setViewport({ width: 390, height: 844, isMobile: true });
  await page.goto(workerUrl + "/app", { waitUntil: "networkidle0" });
  await shot("intent-overview-phone.png");
  const phoneWidth = await page.evaluate(() => document.documentElement.scrollWidth);

  // Signed out: the cookie is gone and the pages ask for a key again.
  await Promise.all([
    page.waitForNavigation({ waitUntil: "networkidle0" }),
    page.click("header button[type=submit]"),
  ]);
  const signedOut = {
    cookies: (await browser.cookies()).filter((c) => c.name === "tl_session").length,
    sign_in_form: (await page.$("#api_key")) !== null,
  };
  await browser.close();
  return { csp, wrong_key: wrongKey, cookie, home, visitor, phone_scroll_width: phoneWidth, signed_out: signedOut, screenshots };
}

// node chromium.cjs health <worker url> <api key> <destination> <out dir>
//   Signs in, reads the health page, resumes the paused destination with its button.
async function health(workerUrl, apiKey, destination, outDir) {
  const browser = await launch();
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  await page.goto(workerUrl + "/app", { waitUntil: "networkidle0" });
  await page.type("#api_key", apiKey);
  await Promise.all([page.waitForNavigation({ waitUntil: "networkidle0" }), page.click("button[type=submit]")]);
  const response = await page.goto(workerUrl + "/app/health", { waitUntil: "networkidle0" });
  const before = {
    status: response.status(),
    csp: response.headers()["content-security-policy"] || null,
    paused: await page.$eval("#paused", (el) => el.textContent).catch(() => null),
    destinations: await page.$$eval("#destinations tbody tr", (trs) => trs.map((tr) => tr.textContent.trim())),
    incidents: await page.$$eval("#incidents tbody tr", (trs) => trs.map((tr) => tr.textContent.trim())),
    rfm: await page.$eval("#rfm", (el) => el.textContent).catch(() => null),
  };
  const shots = [path.join(outDir, "health-paused.png"), path.join(outDir, "health-resumed.png")];
  await page.screenshot({ path: shots[0], fullPage: true });
  await Promise.all([
    page.waitForNavigation({ waitUntil: "networkidle0" }),
    page.click("#paused form button[type=submit]"),
  ]);
  const after = {
    url: page.url(),
    paused: (await page.$("#paused")) !== null,
    incidents: await page.$$eval("#incidents tbody tr", (trs) => trs.map((tr) => tr.textContent.trim())),
  };
  await page.screenshot({ path: shots[1], fullPage: true });
  await browser.close();
  return { destination, before, after, screenshots: shots };
}

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  const outDir = args[3];
  fs.mkdirSync(outDir, { recursive: true });
  const result = mode === "journey" ? await journey(...args)
    : mode === "health" ? await health(...args)
    : await pages(...args);
  process.stdout.write(JSON.stringify(result));
}

main().catch((err) => {
  process.stderr.write(String((err && err.stack) || err));
  process.exit(1);
});
