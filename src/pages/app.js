// TrackLayer pages: shows each time in the reader's own zone (the HTML says UTC).
"use strict";
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var at = new Date(el.getAttribute("datetime"));
  if (isNaN(at.getTime())) return;
  el.title = el.textContent;
  el.textContent = at.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"
  });
});
