// The daemon's page. Everything from a manifest or a peer is hostile text: it is only
// ever set with textContent or as an attribute value, never parsed as HTML.
"use strict";

const releases = new Map(); // id -> the daemon's `show` object
let publishers = {}; // publisher key text -> {fingerprint, name, trusted}
let current = null; // id of the release shown, or null for the overview
let chunkCells = new Map(); // chunk path -> its cell in the map
const eventLog = new Map(); // id -> recent events, newest last
const LOG_MAX = 200;
const timers = new Map(); // throttled refreshes by key

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "cls") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const rate = (n) => `${bytes(n || 0)}/s`;
const percent = (p) => Math.round(Math.max(0, Math.min(1, p || 0)) * 1000) / 10;
const DONE = new Set(["seeding", "complete"]);
// States in which a fetch is under way (it can be paused) or stopped (it can go on).
const FETCHING = new Set(["metadata", "manifest", "downloading"]);

function progressOf(r) {
  if (DONE.has(r.state)) return 100;
  const t = r.transfer;
  // Before "downloading" only the manifest is wanted: no chunk has come yet.
  if (!t || !t.wanted || r.state !== "downloading") return 0;
  // libtorrent's "wanted" is only the window of an ordered fetch: measure against the
  // whole release when every chunk is wanted.
  const whole = (r.include || []).length === 0 && r.total_bytes ? r.total_bytes : t.wanted;
  return Math.min(percent(t.wanted_done / Math.max(whole, t.wanted)), 99.9);
}

function say(text, isError = true) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "info";
  m.hidden = !text;
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    throw new Error("not logged in (or the session ended): run `p2pw ui` for a new link");
  }
  if (!resp.ok) throw new Error(data.error || `${method} ${path}: HTTP ${resp.status}`);
  return data;
}

function throttle(key, ms, fn) {
  if (timers.has(key)) return;
  timers.set(key, setTimeout(() => { timers.delete(key); fn(); }, ms));
}

// ------------------------------------------------------------------ overview

function publisherCell(r) {
  const td = el("td");
  const p = r.publisher ? publishers[r.publisher] : null;
  if (!p) {
    td.append(el("span", { cls: "muted", text: r.publisher ? "…" : "not known yet" }));
    return td;
  }
  td.append(el("span", { cls: "pub-name", text: p.name || "(no name)" }), " ");
  td.append(el("code", { cls: "fingerprint", text: p.fingerprint }));
  td.append(el("br"));
  td.append(el("span", {
    cls: p.trusted ? "trust trusted" : "trust untrusted",
    text: p.trusted ? "✔ trusted" : "✖ not in trust store",
  }));
  return td;
}

function progressCell(r) {
  const pct = progressOf(r);
  const name = r.name || r.id.slice(0, 16);
  const bar = el("progress", { max: "100", value: String(pct), "aria-label": `Progress of ${name}` });
  return el("td", { cls: "progress-cell" }, bar, el("span", { cls: "pct", text: `${pct} %` }));
}

function releaseRow(r) {
  const t = r.transfer || {};
  const name = r.name || "(name not known yet)";
  const link = el("a", { href: `#/release/${r.id}`, cls: "release-name", text: name });
  const title = el("td", {}, link);
  if (r.version !== null && r.version !== undefined) title.append(" ", el("span", { cls: "version", text: `v${r.version}` }));
  if (r.label) title.append(el("br"), el("span", { cls: "label", text: r.label }));
  title.append(el("br"), el("code", { cls: "rid", text: r.id.slice(0, 16) }));
  const state = el("td", {}, el("span", { cls: `state state-${r.state}`, text: r.state }));
  if (r.problem) state.append(el("p", { cls: "problem", text: r.problem }));
  else if (r.error) state.append(el("p", { cls: "problem", text: r.error }));
  const ratio = r.total_bytes ? ((t.all_time_upload || 0) / r.total_bytes).toFixed(2) : "–";
  const actions = el("td", { cls: "actions" });
  actions.append(pauseButton(r), verifyButton(r), removeButton(r, false), removeButton(r, true));
  const tr = el("tr", { "data-id": r.id },
    title,
    publisherCell(r),
    state,
    progressCell(r),
    el("td", { cls: "num", text: `${rate(t.download_rate)} / ${rate(t.upload_rate)}` }),
    el("td", { cls: "num", text: String(t.peers ?? 0) }),
    el("td", { cls: "num", text: ratio }),
    el("td", { cls: "num", text: bytes(r.total_bytes) }),
    actions,
  );
  return tr;
}

function verifyButton(r) {
  const name = r.name || r.id.slice(0, 16);
  const b = el("button", { type: "button", "aria-label": `Verify ${name}`, text: "Verify" });
  if (!DONE.has(r.state)) {
    b.disabled = true;
    b.title = "A release can be verified once it is complete";
  }
  b.addEventListener("click", () => verify(r.id));
  return b;
}

function pauseButton(r) {
  const name = r.name || r.id.slice(0, 16);
  const resume = r.state === "paused" || r.state === "error";
  const b = el("button", {
    type: "button",
    "aria-label": `${resume ? "Resume" : "Pause"} ${name}`,
    text: resume ? "Resume" : "Pause",
  });
  if (!resume && !FETCHING.has(r.state)) {
    b.disabled = true;
    b.title = "Only a fetch under way can be paused";
  }
  b.addEventListener("click", () => (resume ? resumeFetch(r.id) : pauseFetch(r.id)));
  return b;
}

function removeButton(r, withData) {
  const name = r.name || r.id.slice(0, 16);
  const b = el("button", {
    type: "button",
    cls: withData ? "danger" : "",
    "aria-label": `${withData ? "Remove with data" : "Remove"} ${name}`,
    text: withData ? "Remove + data" : "Remove",
  });
  b.addEventListener("click", () => remove(r.id, withData));
  return b;
}

function renderOverview() {
  const body = $("release-rows");
  const rows = [...releases.values()].map(releaseRow);
  body.replaceChildren(...rows);
  $("no-releases").hidden = rows.length > 0;
}

function renderRow(id) {
  const r = releases.get(id);
  const old = document.querySelector(`#release-rows tr[data-id="${CSS.escape(id)}"]`);
  if (!r || !old) { renderOverview(); return; }
  old.replaceWith(releaseRow(r));
}

// ------------------------------------------------------------------ one release

function fact(dl, term, value, code = false) {
  dl.append(el("dt", { text: term }), el("dd", {}, code ? el("code", { text: value }) : value));
}

let loaded = false; // the first list has come

function renderRelease() {
  const r = releases.get(current);
  if (!r) {
    $("release-title").textContent = loaded ? "No such release (removed?)" : "Loading…";
    $("release-facts").replaceChildren();
    return;
  }
  const t = r.transfer || {};
  $("release-title").textContent = `${r.name || "(name not known yet)"}${r.version != null ? ` v${r.version}` : ""}`;
  $("release-label").textContent = r.label || "";
  const problem = r.problem || r.error || "";
  $("release-problem").textContent = problem;
  $("release-problem").hidden = !problem;
  $("release-verify").disabled = !DONE.has(r.state);
  const resume = r.state === "paused" || r.state === "error";
  $("release-pause").textContent = resume ? "Resume" : "Pause";
  $("release-pause").disabled = !resume && !FETCHING.has(r.state);
  const pct = progressOf(r);
  $("release-progress").value = pct;
  $("release-progress-label").textContent = `${pct} % · ${r.state}`;
  const dl = $("release-facts");
  dl.replaceChildren();
  const p = r.publisher ? publishers[r.publisher] : null;
  fact(dl, "Id (v2 info-hash)", r.id, true);
  fact(dl, "State", r.state);
  fact(dl, "Size", bytes(r.total_bytes));
  fact(dl, "Publisher", p ? `${p.name || "(no name)"} · ${p.fingerprint} · ${p.trusted ? "trusted" : "not in trust store"}` : "not known yet");
  fact(dl, "Downloaded / uploaded", `${bytes(t.all_time_download || 0)} / ${bytes(t.all_time_upload || 0)}`);
  fact(dl, "Rates ↓ / ↑", `${rate(t.download_rate)} / ${rate(t.upload_rate)}`);
  fact(dl, "Peers", String(t.peers ?? 0));
  fact(dl, "Hash failures", String(t.hash_failures ?? 0));
  if (r.magnet) fact(dl, "Magnet", r.magnet, true);
  if (r.manifest_sha256) fact(dl, "Manifest sha256", r.manifest_sha256, true);
}

function renderChunks(doc) {
  const map = $("chunk-map");
  chunkCells = new Map();
  const cells = doc.chunks.map((c, i) => {
    const cell = el("span", { role: "listitem", cls: `cell ${c.state}` });
    describeCell(cell, c, i);
    chunkCells.set(c.path, { cell, chunk: c, index: i });
    return cell;
  });
  map.replaceChildren(...cells);
  summarise();
}

function describeCell(cell, c, i) {
  const what = c.tensor ? `first tensor ${c.tensor}` : "a non-tensor file";
  const text = `chunk ${i + 1}: ${c.state.replace("_", " ")}, ${bytes(c.size)}, ${what}`;
  cell.setAttribute("title", text);
  cell.setAttribute("aria-label", text);
  cell.dataset.state = c.state;
}

function summarise() {
  const counts = { verified: 0, in_flight: 0, missing: 0, skipped: 0 };
  for (const { chunk } of chunkCells.values()) counts[chunk.state]++;
  const total = chunkCells.size;
  const s = $("chunk-summary");
  s.textContent = total
    ? `${counts.verified} of ${total} chunks verified, ${counts.in_flight} in flight, ` +
      `${counts.missing} missing, ${counts.skipped} not wanted`
    : "The chunk list is known once the signed manifest is in.";
  s.dataset.verified = String(counts.verified);
  s.dataset.total = String(total);
}

function markChunk(path, state) {
  const entry = chunkCells.get(path);
  if (!entry) return;
  entry.chunk.state = state;
  entry.cell.className = `cell ${state}`;
  describeCell(entry.cell, entry.chunk, entry.index);
  summarise();
}

function renderPeers(doc) {
  const rows = doc.peers.map((p) => el("tr", {},
    el("td", {}, el("code", { text: p.address })),
    el("td", { text: p.client || "–" }),
    el("td", { text: p.sources.map((s) => s.replace("_", " ")).join(", ") }),
    el("td", { text: rate(p.download_rate) }),
    el("td", { text: rate(p.upload_rate) }),
    el("td", { text: p.seed ? "all (seed)" : `${percent(p.progress)} %` }),
  ));
  $("peer-rows").replaceChildren(...rows);
  $("no-peers").hidden = rows.length > 0;
}

function renderLog() {
  const items = (eventLog.get(current) || []).slice().reverse().map((e) => {
    const when = new Date(e.time * 1000).toLocaleTimeString();
    const detail = e.message || e.path || (e.state ? `${e.state} ${percent(e.progress)} %` : "");
    return el("li", {}, el("time", { text: when }), " ", el("strong", { text: e.kind }), " ", detail ? el("span", { text: detail }) : "");
  });
  $("event-log").replaceChildren(...items);
}

async function refreshDetail() {
  if (!current) return;
  const id = current;
  try {
    const [chunks, peers] = await Promise.all([
      api("GET", `/v1/releases/${encodeURIComponent(id)}/chunks`),
      api("GET", `/v1/releases/${encodeURIComponent(id)}/peers`),
    ]);
    if (current !== id) return;
    renderChunks(chunks);
    renderPeers(peers);
  } catch (e) {
    if (current === id) say(e.message);
  }
}

// ------------------------------------------------------------------ data and events

async function loadAll() {
  const [list, pubs] = await Promise.all([api("GET", "/v1/releases"), api("GET", "/v1/publishers")]);
  publishers = pubs.publishers;
  releases.clear();
  for (const r of list.releases) releases.set(r.id, r);
  loaded = true;
  renderOverview();
  if (current) { renderRelease(); refreshDetail(); }
}

async function refreshOne(id) {
  try {
    const r = await api("GET", `/v1/releases/${encodeURIComponent(id)}`);
    const isNew = !releases.has(id);
    releases.set(id, r);
    if (r.publisher && !publishers[r.publisher]) {
      publishers = (await api("GET", "/v1/publishers")).publishers;
    }
    if (isNew) renderOverview(); else renderRow(id);
    if (current === id) { renderRelease(); refreshDetail(); }
  } catch (e) {
    // Gone (removed meanwhile): drop it from the page.
    releases.delete(id);
    renderOverview();
    if (current === id) renderRelease();
  }
}

function onEvent(e) {
  if (e.kind === "subscribed") {
    $("daemon").textContent = "live";
    loadAll().catch((err) => say(err.message));
    return;
  }
  if (!e.id) return;
  // file_completed repeats what the chunk event says (after the chunk is recorded).
  if (e.kind !== "progress" && e.kind !== "file_completed") {
    const log = eventLog.get(e.id) || [];
    log.push(e);
    if (log.length > LOG_MAX) log.shift();
    eventLog.set(e.id, log);
    if (current === e.id) renderLog();
  }
  if (e.kind === "removed") {
    releases.delete(e.id);
    renderOverview();
    if (current === e.id) renderRelease();
    return;
  }
  if (e.kind === "chunk") {
    if (current === e.id) markChunk(e.path, "verified");
    return;
  }
  if (e.kind === "progress") {
    const r = releases.get(e.id);
    if (r) {
      r.transfer = Object.assign(r.transfer || {}, {
        progress: e.progress, download_rate: e.download_rate, upload_rate: e.upload_rate,
        peers: e.peers, wanted: e.wanted, wanted_done: e.wanted_done,
      });
      renderRow(e.id);
      if (current === e.id) renderRelease();
    }
    if (current === e.id) throttle(`detail:${e.id}`, 1000, refreshDetail);
    // A full `show` now and then keeps totals and ratio honest.
    throttle(`show:${e.id}`, 2000, () => refreshOne(e.id));
    return;
  }
  throttle(`show:${e.id}`, 100, () => refreshOne(e.id));
}

function listen() {
  const source = new EventSource("/v1/events");
  source.onmessage = (m) => {
    try { onEvent(JSON.parse(m.data)); } catch (err) { say(String(err)); }
  };
  source.onerror = () => {
    // The browser retries a dropped stream by itself; a refused one (401: the daemon
    // restarted and forgot the session) it gives up on.
    if (source.readyState === EventSource.CLOSED) {
      $("daemon").textContent = "logged out";
      say("The daemon ended this session (it may have restarted): run `p2pw ui` for a new link.");
    } else {
      $("daemon").textContent = "disconnected; reconnecting…";
    }
  };
}

// ------------------------------------------------------------------ actions

async function remove(id, withData) {
  const r = releases.get(id);
  const name = r ? (r.name || id.slice(0, 16)) : id.slice(0, 16);
  const what = withData ? `Remove ${name} and delete its data?` : `Stop seeding ${name} and remove it?`;
  if (!window.confirm(what)) return;
  try {
    await api("DELETE", `/v1/releases/${encodeURIComponent(id)}${withData ? "?delete_data=1" : ""}`);
    releases.delete(id);
    renderOverview();
    say(`Removed ${name}.`, false);
    if (current === id) location.hash = "#/";
  } catch (e) {
    say(e.message);
  }
}

async function pauseFetch(id) {
  const r = releases.get(id);
  const name = r ? (r.name || id.slice(0, 16)) : id.slice(0, 16);
  try {
    await api("POST", `/v1/releases/${encodeURIComponent(id)}/pause`);
    say(`Paused ${name}; Resume goes on from where it stopped.`, false);
  } catch (e) {
    say(e.message);
  }
}

async function resumeFetch(id) {
  const r = releases.get(id);
  const name = r ? (r.name || id.slice(0, 16)) : id.slice(0, 16);
  try {
    // The same fetch again: the daemon goes on with the peers and selection it knew.
    await api("POST", "/v1/fetch", { uri: (r && r.magnet) || id });
    say(`Resumed ${name}.`, false);
  } catch (e) {
    say(e.message);
  }
}

async function verify(id) {
  const r = releases.get(id);
  const name = r ? (r.name || id.slice(0, 16)) : id.slice(0, 16);
  say(`Verifying ${name}: re-hashing every chunk…`, false);
  try {
    const v = await api("POST", `/v1/releases/${encodeURIComponent(id)}/verify?full=1`);
    say(`${name}: all ${v.chunks} chunks intact (${bytes(v.bytes)} re-hashed in ${v.seconds} s).`, false);
  } catch (e) {
    say(`${name}: ${e.message}`);
  }
}

async function startFetch(ev) {
  ev.preventDefault();
  const uri = $("fetch-uri").value.trim();
  const peers = $("fetch-peers").value.split(",").map((s) => s.trim()).filter(Boolean);
  const button = $("fetch-button");
  button.disabled = true;
  try {
    const r = await api("POST", "/v1/fetch", { uri, peers, ordered: $("fetch-ordered").checked });
    releases.set(r.id, r);
    renderOverview();
    say(`Fetching ${r.id.slice(0, 16)}…`, false);
    $("fetch-uri").value = "";
  } catch (e) {
    say(e.message);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ views

function route() {
  say("");
  const m = location.hash.match(/^#\/release\/([0-9a-f]{64})$/);
  current = m ? m[1] : null;
  $("overview").hidden = current !== null;
  $("release").hidden = current === null;
  if (current) {
    renderRelease();
    renderLog();
    $("chunk-map").replaceChildren();
    chunkCells = new Map();
    refreshDetail();
    $("release-title").focus();
  }
}

function start() {
  $("fetch-form").addEventListener("submit", startFetch);
  $("release-pause").addEventListener("click", () => {
    const r = current && releases.get(current);
    if (!r) return;
    if (r.state === "paused" || r.state === "error") resumeFetch(r.id);
    else pauseFetch(r.id);
  });
  $("release-verify").addEventListener("click", () => current && verify(current));
  $("release-remove").addEventListener("click", () => current && remove(current, false));
  $("release-remove-data").addEventListener("click", () => current && remove(current, true));
  $("release-title").setAttribute("tabindex", "-1");
  window.addEventListener("hashchange", route);
  route();
  listen(); // its first event ("subscribed") loads everything
}

document.addEventListener("DOMContentLoaded", start);
