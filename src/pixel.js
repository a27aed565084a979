/*! TrackLayer first-party pixel. Keeps the ad click ids a visitor lands with and the ad
 * cookies already on the page, so the merchant's server-side conversions can be
 * attributed weeks later, and reports page views (path and title) and demo-form
 * starts and submits for intent scoring. Sends only those values, a random visitor id
 * and what tracklayer('identify', …) is given: never the query string, the fragment,
 * the referrer or form contents. */
(function (w, d) {
  "use strict";
  var script = d.currentScript;
  var key = script && script.getAttribute("data-key");
  var existing = w.tracklayer;
  if (!key || !/^tlp_[0-9a-f]{32}$/.test(key) || (existing && existing.loaded)) return;
  var queued = (existing && existing.q) || [];
  var endpoint = script.src.split("/v1/pixel.js")[0] + "/v1/pixel/" + key + "/collect";
  var LANDING_PARAMS = ["gclid", "gbraid", "wbraid", "fbclid", "li_fat_id", "ttclid"];
  var COOKIES = ["_fbp", "_fbc", "_ga", "_gcl_aw", "li_fat_id"];
  var VISITOR_COOKIE = "_tl_vid";
  var SENT_KEY = "_tl_sent";
  var VISITOR_MAX_AGE_S = 400 * 86400; // the longest lifetime browsers allow
  var RESEND_AFTER_MS = 864e5; // refresh address and browser once a day at most
  var consented = script.getAttribute("data-consent") !== "required";

  // Cookie values are kept exactly as written: click ids are case-sensitive and must
  // not be decoded twice.
  function readCookie(name) {
    var parts = d.cookie ? d.cookie.split(/;\s*/) : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (eq > 0 && parts[i].slice(0, eq) === name) return parts[i].slice(eq + 1);
    }
    return null;
  }

  // On the widest domain the browser accepts (example.com for app.example.com), so the
  // marketing site and the app share one visitor id.
  function writeCookie(name, value, maxAge) {
    var tail = "; Max-Age=" + maxAge + "; Path=/; SameSite=Lax" +
      (w.location.protocol === "https:" ? "; Secure" : "");
    var labels = w.location.hostname.split(".");
    for (var i = labels.length - 2; i >= 0; i--) {
      d.cookie = name + "=" + value + tail + "; Domain=" + labels.slice(i).join(".");
      if (maxAge > 0 ? readCookie(name) === value : readCookie(name) === null) return;
    }
    d.cookie = name + "=" + value + tail;
  }

  function newVisitorId() {
    var bytes = new Uint8Array(16);
    w.crypto.getRandomValues(bytes);
    var id = "";
    for (var i = 0; i < bytes.length; i++) id += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return id;
  }

  function visitorId() {
    var id = readCookie(VISITOR_COOKIE);
    if (!id || !/^[0-9a-f]{32}$/.test(id)) id = newVisitorId();
    writeCookie(VISITOR_COOKIE, id, VISITOR_MAX_AGE_S);
    return id;
  }

  // A short digest of what was sent, so nothing personal is kept in localStorage.
  function digest(text) {
    var h = 5381;
    for (var i = 0; i < text.length; i++) h = ((h << 5) + h + text.charCodeAt(i)) | 0;
    return String(h);
  }

  function storage(action, value) {
    try {
      if (action === "get") return JSON.parse(w.localStorage.getItem(SENT_KEY) || "null");
      if (action === "set") w.localStorage.setItem(SENT_KEY, JSON.stringify(value));
      if (action === "remove") w.localStorage.removeItem(SENT_KEY);
    } catch (e) { /* storage blocked: send every time */ }
    return null;
  }

  // Every beacon: no Referer (the page URL carries click ids and utm parameters) and
  // no credentials; text/plain keeps it a simple CORS request with no preflight.
  function post(body, done) {
    if (!w.fetch) return;
    w.fetch(endpoint, {
      method: "POST", body: body, keepalive: true, credentials: "omit",
      referrerPolicy: "no-referrer", headers: { "content-type": "text/plain" }
    }).then(function (response) {
      if (response.ok) { if (done) done(); }
      else if (w.console) w.console.warn("TrackLayer pixel: beacon refused with HTTP " + response.status);
    }, function () { /* offline: nothing to do */ });
  }

  function currentPath() {
    return w.location.pathname || "/";
  }

  var lastPath = null;
  // A page view: path and title only. The first one of a page load also carries the
  // ids when they changed (or once a day), so a visit costs one beacon.
  function pageView() {
    if (!consented) return;
    var path = currentPath();
    if (path === lastPath) return;
    lastPath = path;
    var beacon = { visitor_id: visitorId(), page: { path: path, title: (d.title || "").slice(0, 200) } };
    var ids = idsBeacon();
    if (ids) { beacon.landing = ids.beacon.landing; beacon.cookies = ids.beacon.cookies; }
    post(JSON.stringify(beacon), ids && function () { storage("set", ids.sent); });
  }

  function formEvent(form, step) {
    if (!consented || !/^[a-z0-9_-]{1,40}$/.test(form) || (step !== "start" && step !== "submit")) return;
    post(JSON.stringify({ visitor_id: visitorId(), form: { form: form, step: step, path: currentPath() } }));
  }

  // The ids part, when it differs from what was last sent or a day has passed.
  function idsBeacon(identity) {
    var beacon = { landing: {}, cookies: {} };
    var query = new URLSearchParams(w.location.search);
    LANDING_PARAMS.forEach(function (name) {
      var value = query.get(name);
      if (value) beacon.landing[name] = value;
    });
    COOKIES.forEach(function (name) {
      var value = readCookie(name);
      if (value) beacon.cookies[name] = value;
    });
    if (identity) beacon.identify = identity;
    var sent = { d: digest(JSON.stringify(beacon)), t: Date.now() };
    var last = storage("get");
    if (!identity && last && last.d === sent.d && sent.t - last.t < RESEND_AFTER_MS) return null;
    return { beacon: beacon, sent: sent };
  }

  function send(identity) {
    if (!consented) return;
    var ids = idsBeacon(identity);
    if (!ids) return;
    ids.beacon.visitor_id = visitorId();
    post(JSON.stringify(ids.beacon), function () { storage("set", ids.sent); });
  }

  // Forms marked data-tl-form="demo": the first input starts, the submit submits.
  function watchForms() {
    var started = {};
    d.addEventListener("focusin", function (event) {
      var form = event.target && event.target.closest && event.target.closest("form[data-tl-form]");
      if (!form) return;
      var name = form.getAttribute("data-tl-form");
      if (started[name]) return;
      started[name] = true;
      formEvent(name, "start");
    }, true);
    d.addEventListener("submit", function (event) {
      var form = event.target && event.target.closest && event.target.closest("form[data-tl-form]");
      if (!form) return;
      var name = form.getAttribute("data-tl-form");
      started[name] = false;
      formEvent(name, "submit");
    }, true);
  }

  // Single-page apps: a pushState or replaceState to a new path, or back/forward.
  function watchNavigation() {
    ["pushState", "replaceState"].forEach(function (name) {
      var original = w.history && w.history[name];
      if (typeof original !== "function") return;
      w.history[name] = function () {
        var result = original.apply(this, arguments);
        pageView();
        return result;
      };
    });
    w.addEventListener("popstate", pageView);
  }

  function tracklayer(command, argument) {
    if (command === "identify" && argument) {
      send({ email: argument.email || undefined, user_id: argument.user_id || undefined });
    } else if (command === "form" && argument) {
      formEvent(String(argument.form || ""), argument.step);
    } else if (command === "consent") {
      consented = argument !== false;
      if (consented) {
        lastPath = null;
        pageView();
      } else {
        writeCookie(VISITOR_COOKIE, "", 0);
        storage("remove");
      }
    }
  }
  tracklayer.loaded = true;
  w.tracklayer = tracklayer;
  var consentFirst = queued.filter(function (args) { return args[0] === "consent"; });
  var others = queued.filter(function (args) { return args[0] !== "consent"; });
  consentFirst.forEach(function (args) { tracklayer.apply(null, args); });
  if (!consentFirst.length) pageView();
  others.forEach(function (args) { tracklayer.apply(null, args); });
  watchForms();
  watchNavigation();
})(window, document);
