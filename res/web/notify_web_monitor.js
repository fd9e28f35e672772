// The event monitor page: a Server-Sent Events stream from /stream, filtered by
// event type and origin pattern.  Every value from an event goes into the page
// with textContent, never as markup.
"use strict";

const MAX_SHOWN = 500;      // events kept in the list; older ones are removed
const MAX_HELD = 5000;      // events kept while paused
const RATE_WINDOW_MS = 60000;

const list = document.getElementById("events");
const statusBadge = document.getElementById("status");
const pauseButton = document.getElementById("pause");
let source = null;
let paused = false;
let held = [];
const arrivals = new Map();  // event name -> arrival times (ms) within the rate window
let newestCounted = { run: "", seq: 0 };  // a replay after a filter change is not counted again

function text(tag, className, value) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  element.textContent = value == null ? "" : String(value);
  return element;
}

function setStatus(state, label) {
  statusBadge.className = state;
  statusBadge.textContent = label;
}

function render(event) {
  const item = document.createElement("li");
  item.className = "event";
  item.dataset.eventId = String(event.event_id);
  item.dataset.origin = String(event.origin);
  const head = document.createElement("div");
  head.className = "head";
  head.append(
    text("span", "name", event.event_name),
    text("span", "id", "#" + event.event_id),
    text("span", "origin", event.origin),
    text("span", "type", event.type),
    text("span", "time", new Date(event.received * 1000).toLocaleTimeString())
  );
  const fields = document.createElement("dl");
  for (const [name, value] of event.fields) {
    const seconds = Number(value);
    const shown = name === "datetime" && value !== "" && isFinite(seconds)
      ? value + "  (" + new Date(seconds * 1000).toISOString() + ")" : value;
    fields.append(text("dt", "field-name", name), text("dd", "field-value", shown));
  }
  item.append(head, fields);
  return item;
}

function show(event) {
  list.prepend(render(event));
  while (list.children.length > MAX_SHOWN) list.lastElementChild.remove();
  document.getElementById("empty").hidden = list.children.length > 0;
  document.getElementById("shown").textContent = String(list.children.length);
}

function countArrival(event, id) {
  const run = String(id || "").split("-")[0];
  if (run === newestCounted.run && event.seq <= newestCounted.seq) return;
  newestCounted = { run: run, seq: event.seq };
  const name = event.event_name + " (" + event.event_id + ")";
  const times = arrivals.get(name) || [];
  times.push(Date.now());
  arrivals.set(name, times);
}

function renderRates() {
  const cutoff = Date.now() - RATE_WINDOW_MS;
  const body = document.querySelector("#rates tbody");
  body.replaceChildren();
  for (const [name, times] of [...arrivals.entries()].sort()) {
    while (times.length && times[0] < cutoff) times.shift();
    if (!times.length) { arrivals.delete(name); continue; }
    const row = document.createElement("tr");
    row.append(text("td", "", name), text("td", "rate", times.length));
    body.append(row);
  }
}

function received(message) {
  const event = JSON.parse(message.data);
  countArrival(event, message.lastEventId);
  if (paused) {
    held.push(event);
    if (held.length > MAX_HELD) held.shift();
    document.getElementById("held").textContent = String(held.length);
  } else {
    show(event);
  }
}

function connect() {
  if (source) source.close();
  const params = new URLSearchParams();
  const type = document.getElementById("event-type").value;
  const origin = document.getElementById("origin").value.trim();
  if (type) params.set("event", type);
  if (origin && origin !== "#") params.set("origin", origin);
  source = new EventSource("/stream?" + params.toString());
  source.onopen = () => setStatus("live", "live");
  source.onerror = () => setStatus("down", "reconnecting");
  source.onmessage = received;
}

function clearList() {
  list.replaceChildren();
  held = [];
  document.getElementById("held").textContent = "0";
  document.getElementById("shown").textContent = "0";
  document.getElementById("empty").hidden = false;
}

async function loadTypes() {
  const select = document.getElementById("event-type");
  try {
    const response = await fetch("/types");
    for (const type of await response.json()) {
      const option = text("option", "", type.name + " (" + type.id + ")");
      option.value = String(type.id);
      select.append(option);
    }
  } catch (error) {
    setStatus("down", "cannot load event types");
  }
}

document.getElementById("apply").addEventListener("click", () => { clearList(); connect(); });
document.getElementById("origin").addEventListener("keydown", (e) => { if (e.key === "Enter") { clearList(); connect(); } });
document.getElementById("event-type").addEventListener("change", () => { clearList(); connect(); });
document.getElementById("clear").addEventListener("click", clearList);
pauseButton.addEventListener("click", () => {
  paused = !paused;
  pauseButton.textContent = paused ? "Resume" : "Pause";
  if (!paused) {
    for (const event of held) show(event);
    held = [];
    document.getElementById("held").textContent = "0";
  }
});
document.getElementById("limit").textContent = String(MAX_SHOWN);
setInterval(renderRates, 1000);
loadTypes().then(connect);
