// The console's only script, loaded from its own origin (no inline script: the
// Content-Security-Policy forbids it). It asks before destructive actions and keeps relative
// times current; every page works without it.
"use strict";

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

function relative(at, now) {
  const seconds = Math.round((now - at) / 1000);
  const span = Math.abs(seconds);
  let amount;
  if (span < 5) return "just now";
  if (span < 60) amount = span + " s";
  else if (span < 3600) amount = Math.floor(span / 60) + " min";
  else if (span < 86400) amount = Math.floor(span / 3600) + " h";
  else if (span < 2592000) amount = Math.floor(span / 86400) + " d";
  else return new Date(at).toISOString().slice(0, 10);
  return seconds < 0 ? "in " + amount : amount + " ago";
}

function refreshTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll("time[datetime]")) {
    const at = Date.parse(el.getAttribute("datetime"));
    if (!Number.isNaN(at)) el.textContent = relative(at, now);
  }
}

setInterval(refreshTimes, 15000);
