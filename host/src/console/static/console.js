// The switchboard console's only script: confirmations for destructive forms, and the live
// transcript of a session page, fed by the session event stream (the console's session cookie
// authorizes it). Everything works without it except the live updates.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function messageItem(m) {
  const li = document.createElement("li");
  li.dataset.id = String(m.id);
  li.className = "msg role-" + m.role;
  const meta = document.createElement("span");
  meta.className = "meta";
  const when = new Date(m.created_at_ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  meta.textContent = m.role + (m.kind !== "message" ? " · " + m.kind : "") + " · " + when;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = m.body;
  li.append(meta, body);
  return li;
}

function live(section) {
  const session = section.dataset.session;
  const transcript = document.getElementById("transcript");
  const streaming = document.getElementById("streaming");
  const state = document.getElementById("run-state");
  const status = document.getElementById("live-status");
  const queueCount = document.getElementById("queue-count");
  const url = "/api/sessions/" + encodeURIComponent(session) + "/events?after=" +
    encodeURIComponent(section.dataset.after || "0");
  const source = new EventSource(url);
  const read = (event) => {
    try { return JSON.parse(event.data); } catch (_) { return null; }
  };
  source.addEventListener("open", () => { status.textContent = "connected"; });
  source.addEventListener("error", (event) => {
    // The host's own `error` event carries a message; a connection error carries none, and
    // EventSource reconnects by itself (resuming from the last message id).
    const e = event.data ? read(event) : null;
    if (e && e.message) {
      status.textContent = e.message;
    } else {
      status.textContent = source.readyState === EventSource.CLOSED ? "closed; reload the page" : "reconnecting…";
    }
  });
  source.addEventListener("message", (event) => {
    const m = read(event);
    if (!m) return;
    const item = messageItem(m);
    const old = transcript.querySelector('li[data-id="' + String(m.id) + '"]');
    if (old) { old.replaceWith(item); } else { transcript.append(item); }
    if (m.role === "assistant") { streaming.textContent = ""; streaming.hidden = true; }
  });
  source.addEventListener("message_part", (event) => {
    const p = read(event);
    if (!p) return;
    streaming.hidden = false;
    streaming.textContent += p.text;
  });
  source.addEventListener("status", (event) => {
    const s = read(event);
    if (!s) return;
    state.textContent = s.state + (s.last_error ? " (" + s.last_error + ")" : "");
    if (s.state !== "running") { streaming.textContent = ""; streaming.hidden = true; }
  });
  source.addEventListener("queue_update", (event) => {
    const q = read(event);
    if (q && queueCount) { queueCount.textContent = String(q.queue.length); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("live");
  if (section && window.EventSource) { live(section); }
});
