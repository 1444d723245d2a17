// rsir search page: plain JS, no build step, no network access beyond this service.
// Everything user- or data-supplied goes into the page through textContent, never innerHTML.
"use strict";

const TOKEN_KEY = "rsir-token";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

const state = {
  info: null,          // GET /v1/info
  query: null,         // {kind: "file", blob, name} | {kind: "url", url}
  k: 12,               // current k (grows with "More")
  page: 12,            // k step of one page
  objectUrls: [],      // thumbnails to revoke on the next render
};

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function authHeaders() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

async function api(path, options) {
  const opts = options || {};
  const res = await fetch(path, { ...opts, headers: { ...authHeaders(), ...(opts.headers || {}) } });
  if (res.status === 401) {
    $("auth").hidden = false;
    $("token").focus();
  }
  if (!res.ok) {
    let message = "HTTP " + res.status;
    try { const body = await res.json(); message = body.error + ": " + body.message; } catch (e) { /* not JSON */ }
    const err = new Error(message);
    err.status = res.status;
    throw err;
  }
  return res;
}

// userAsked: false when the page loads. A service with tokens then answers 401 before the
// user could do anything: that is a prompt for the token (neutral), not an error (red).
async function loadInfo(userAsked) {
  try {
    const info = await (await api("/v1/info")).json();
    state.info = info;
    $("auth").hidden = true;
    $("about").textContent = `${info.collection}: ${info.count.toLocaleString()} items · ` +
      `${info.method}, ${info.bits}-bit codes · encoder ${info.encoder_id}`;
    const list = $("labels");
    list.replaceChildren(...info.classes.map((c) => { const o = document.createElement("option"); o.value = c; return o; }));
    return true;
  } catch (err) {
    $("about").textContent = err.status === 401 ? "this service needs a token" : "not available";
    if (err.status === 401 && !userAsked) {
      setStatus(token() ? "The saved token is not accepted: enter the access token to search."
                        : "Enter the access token to search.", false);
    } else {
      setStatus(err.status === 401 ? "This token is not accepted (" + err.message + ")" : err.message, true);
    }
    return false;
  }
}

function filterParam() {
  const label = $("label").value.trim();
  return label ? { label } : null;
}

async function runSearch() {
  if (!state.query) return;
  const k = state.k;
  const filter = filterParam();
  setStatus("searching…");
  $("more").disabled = true;
  const t0 = performance.now();
  try {
    let res;
    if (state.query.kind === "url") {
      const body = { url: state.query.url, k };
      if (filter) body.filter = filter;
      res = await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    } else {
      const params = new URLSearchParams({ k: String(k) });
      if (filter) params.set("filter", JSON.stringify(filter));
      res = await api("/v1/search?" + params, {
        method: "POST",
        headers: { "Content-Type": state.query.blob.type || "application/octet-stream" },
        body: state.query.blob,
      });
    }
    const hits = (await res.json()).hits;
    render(hits);
    const ms = Math.round(performance.now() - t0);
    setStatus(`${hits.length} hit${hits.length === 1 ? "" : "s"} in ${ms} ms` + (filter ? ` (label ${filter.label})` : ""));
    const maxK = state.info ? state.info.limits.max_k : k;
    $("more").hidden = hits.length < k || k >= maxK;
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("more").disabled = false;
  }
}

function render(hits) {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
  const grid = $("grid");
  grid.replaceChildren(...hits.map(card));
  drawMap(hits);
  hits.forEach((h, i) => loadThumb(h, grid.children[i].querySelector(".thumb")));
}

function card(hit, i) {
  const el = document.createElement("article");
  el.className = "hit-card";
  el.dataset.id = hit.id;
  el.dataset.rank = String(i + 1);
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  thumb.textContent = "…";
  const body = document.createElement("div");
  body.className = "body";
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = "#" + (i + 1);
  const label = document.createElement("p");
  label.className = "label";
  label.textContent = hit.label || "(no label)";
  const dist = document.createElement("p");
  dist.className = "distance";
  dist.textContent = "distance " + hit.distance;
  const meta = document.createElement("dl");
  const idRow = [["id", hit.id]];
  const rows = idRow.concat(Object.entries(hit.metadata || {}).slice(0, 6).map(([k, v]) => [k, fmt(v)]));
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v; dd.title = v;
    meta.append(dt, dd);
  }
  body.append(rank, label, dist, meta);
  el.append(thumb, body);
  el.addEventListener("mouseenter", () => highlight(hit.id, true));
  el.addEventListener("mouseleave", () => highlight(hit.id, false));
  return el;
}

function fmt(v) {
  if (Array.isArray(v)) return "[" + v.map((x) => (typeof x === "number" ? +x.toFixed(4) : x)).join(", ") + "]";
  if (v && typeof v === "object") return JSON.stringify(v);
  return String(v);
}

async function loadThumb(hit, box) {
  if (!hit.path) { box.textContent = "no image"; return; }
  try {
    const res = await api("/v1/image?path=" + encodeURIComponent(hit.path));
    const url = URL.createObjectURL(await res.blob());
    state.objectUrls.push(url);
    const img = document.createElement("img");
    img.alt = hit.label || hit.id;
    img.src = url;
    box.replaceChildren(img);
  } catch (err) {
    box.textContent = "no image";
  }
}

// ------------------------------------------------------------------ footprints (SVG, no tiles)
function footprint(meta) {
  if (!meta) return null;
  const b = meta.lonlat_bounds || (meta.crs === "EPSG:4326" ? meta.bounds : null);
  if (Array.isArray(b) && b.length === 4 && b.every(Number.isFinite)) return { w: b[0], s: b[1], e: b[2], n: b[3] };
  const p = meta.lonlat;
  if (Array.isArray(p) && p.length === 2 && p.every(Number.isFinite)) return { w: p[0], s: p[1], e: p[0], n: p[1] };
  return null;
}

function niceStep(span) {
  const raw = span / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
  return 10 * p;
}

function drawMap(hits) {
  const svg = $("map");
  const shapes = hits.map((h, i) => ({ hit: h, rank: i + 1, f: footprint(h.metadata) })).filter((x) => x.f);
  $("map-panel").hidden = shapes.length === 0;
  svg.replaceChildren();
  if (!shapes.length) return;
  let w = Math.min(...shapes.map((x) => x.f.w)), e = Math.max(...shapes.map((x) => x.f.e));
  let s = Math.min(...shapes.map((x) => x.f.s)), n = Math.max(...shapes.map((x) => x.f.n));
  const pad = Math.max(e - w, n - s, 0.01) * 0.1;
  w -= pad; e += pad; s -= pad; n += pad;
  const W = 320, H = 240;
  const kx = Math.cos(((s + n) / 2) * Math.PI / 180);          // equirectangular, true at mid-latitude
  const scale = Math.min(W / ((e - w) * kx), H / (n - s));
  const cx = (w + e) / 2, cy = (s + n) / 2;
  const X = (lon) => W / 2 + (lon - cx) * kx * scale;
  const Y = (lat) => H / 2 - (lat - cy) * scale;
  const add = (tag, attrs, parent) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    (parent || svg).appendChild(el);
    return el;
  };
  const step = niceStep(Math.max(e - w, n - s));
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  for (let lon = Math.ceil((cx - W / 2 / kx / scale) / step) * step; X(lon) < W; lon += step) {
    add("line", { x1: X(lon), x2: X(lon), y1: 0, y2: H, class: "grid" });
    add("text", { x: X(lon) + 2, y: H - 3, class: "grid-label" }).textContent = lon.toFixed(decimals) + "°";
  }
  for (let lat = Math.ceil((cy - H / 2 / scale) / step) * step; Y(lat) > 0; lat += step) {
    add("line", { x1: 0, x2: W, y1: Y(lat), y2: Y(lat), class: "grid" });
    add("text", { x: 2, y: Y(lat) - 2, class: "grid-label" }).textContent = lat.toFixed(decimals) + "°";
  }
  for (const { hit, rank, f } of shapes.reverse()) {   // best hit drawn last, on top
    const width = Math.max(3, X(f.e) - X(f.w)), height = Math.max(3, Y(f.s) - Y(f.n));
    const r = add("rect", { x: X(f.w), y: Y(f.n), width, height, class: "footprint", "data-id": hit.id });
    add("title", {}, r).textContent = `#${rank} ${hit.label} (distance ${hit.distance})`;
    r.addEventListener("mouseenter", () => highlight(hit.id, true));
    r.addEventListener("mouseleave", () => highlight(hit.id, false));
  }
}

function highlight(id, on) {
  for (const el of document.querySelectorAll(".hit-card, #map .footprint")) {
    if (el.dataset.id === id) el.classList.toggle("hl", on);
  }
}

// ------------------------------------------------------------------ query input
function setFileQuery(file) {
  if (!file) return;
  state.query = { kind: "file", blob: file, name: file.name };
  const img = $("query-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  $("query-name").textContent = file.name;
  $("query-preview").hidden = false;
  newSearch();
}

function newSearch() {
  state.page = parseInt($("k").value, 10);
  state.k = state.page;
  runSearch();
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => setFileQuery(ev.target.files[0]));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    setFileQuery(ev.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("file").click(); });
  $("url-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const url = $("url").value.trim();
    if (!url) return;
    state.query = { kind: "url", url };
    $("query-preview").hidden = true;
    newSearch();
  });
  $("k").addEventListener("change", newSearch);
  $("label").addEventListener("change", newSearch);
  $("more").addEventListener("click", () => {
    const maxK = state.info ? state.info.limits.max_k : state.k + state.page;
    state.k = Math.min(maxK, state.k + state.page);
    runSearch();
  });
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    if (await loadInfo(true)) { setStatus("token accepted"); if (state.query) runSearch(); }
  });
  loadInfo(false);
}

document.addEventListener("DOMContentLoaded", setup);
