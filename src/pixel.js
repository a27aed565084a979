/*! TrackLayer first-party pixel. Keeps the ad click ids a visitor lands with and the ad
 * cookies already on the page, so the merchant's server-side conversions can be
 * attributed weeks later. Sends only those values, a random visitor id and what
 * tracklayer('identify', …) is given: never the page URL, title or form contents. */
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

  function send(identity) {
    if (!consented) return;
    var beacon = { visitor_id: visitorId(), landing: {}, cookies: {} };
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
    var body = JSON.stringify(beacon);
    var sent = { d: digest(body), t: Date.now() };
    var last = storage("get");
    if (!identity && last && last.d === sent.d && sent.t - last.t < RESEND_AFTER_MS) return;
    // text/plain keeps this a simple CORS request: no preflight round trip.
    if (w.fetch) {
      w.fetch(endpoint, {
        method: "POST", body: body, keepalive: true, credentials: "omit",
        headers: { "content-type": "text/plain" }
      }).then(function (response) {
        if (response.ok) storage("set", sent);
        else if (w.console) w.console.warn("TrackLayer pixel: beacon refused with HTTP " + response.status);
      }, function () { /* offline: the next page view sends again */ });
    } else if (w.navigator.sendBeacon && w.navigator.sendBeacon(endpoint, body)) {
      storage("set", sent);
    }
  }

  function tracklayer(command, argument) {
    if (command === "identify" && argument) {
      send({ email: argument.email || undefined, user_id: argument.user_id || undefined });
    } else if (command === "consent") {
      consented = argument !== false;
      if (consented) {
        send();
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
  if (!consentFirst.length) send();
  others.forEach(function (args) { tracklayer.apply(null, args); });
})(window, document);
