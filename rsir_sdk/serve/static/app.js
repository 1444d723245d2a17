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
  bbox: null,          // [w, s, e, n] drawn on the map: filters the search (null: none)
  proj: null,          // the map's current projection: {X, Y, lon, lat} (see drawMap)
  hits: [],            // the hits drawn
  searchSeq: 0,        // bumped by each search: an answer to an older one is dropped
};

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function authHeaders() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.title = "";
  el.classList.toggle("error", !!isError);
}

// fetch() rejects with a bare TypeError ("Failed to fetch") when no answer came at all: the
// service is stopped or the network is down. Say that, not the browser's words.
const UNREACHABLE = "The service cannot be reached (is rsir serve running?)";

async function api(path, options) {
  const opts = options || {};
  let res;
  try {
    res = await fetch(path, { ...opts, headers: { ...authHeaders(), ...(opts.headers || {}) } });
  } catch (e) {
    throw new Error(UNREACHABLE);
  }
  if (res.status === 401) {
    $("auth").hidden = false;
    $("token").focus();
  }
  if (!res.ok) {
    // the service's one line for a person; its error class (for a developer) kept aside
    let message = "HTTP " + res.status, kind = null;
    try { const body = await res.json(); message = body.message || body.error || message; kind = body.error || null; } catch (e) { /* not JSON */ }
    const err = new Error(message);
    err.status = res.status;
    err.kind = kind;
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
    // the appearance mode needs fine codes in the collection (null: none kept)
    const kept = "collection_fine_bits" in info ? info.collection_fine_bits : info.fine_bits;
    const fine = kept !== null && kept !== undefined;
    const fineBits = fine ? ` + ${kept}-bit fine codes` : "";
    $("about").textContent = `${info.collection}: ${info.count.toLocaleString()} items · ` +
      `${info.method}, ${info.bits}-bit codes${fineBits} · encoder ${info.encoder_id}`;
    $("appearance").disabled = !fine;
    $("appearance-toggle").classList.toggle("off", !fine);
    $("appearance-toggle").title = fine
      ? `rank by appearance alone (the ${kept}-bit fine code): near-duplicates, the same place seen again`
      : "this collection keeps no fine codes (made before them): rebuild it to search by appearance";
    if (!fine) $("appearance").checked = false;
    applyLimits(info.limits || {});
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

// the page offers what this service accepts: no k above its --max-k (the default 12 failed
// every first search under --max-k 10), no URL box under --no-urls
function applyLimits(limits) {
  const maxK = limits.max_k;
  if (Number.isInteger(maxK)) {
    const select = $("k");
    const wanted = [8, 12, 24, 48].filter((n) => n < maxK).concat([Math.min(maxK, 48)]);
    const sizes = [...new Set(wanted)].sort((a, b) => a - b);
    const chosen = Math.min(parseInt(select.value, 10) || 12, maxK);
    select.replaceChildren(...sizes.map((n) => {
      const o = document.createElement("option");
      o.textContent = String(n);
      o.selected = n === (sizes.includes(chosen) ? chosen : sizes[sizes.length - 1]);
      return o;
    }));
  }
  if (limits.urls === false) {
    $("url").hidden = true;
    $("url-form").querySelector("button[type=submit]").hidden = true;
  }
}

function filterParam() {
  const label = $("label").value.trim();
  return label ? { label } : null;
}

// place, period and largest distance of the search: {bbox: "w,s,e,n", near:
// "lon,lat,metres", time: "start/end", radius: n} (only those set); throws on a `near` or a
// `max distance` that cannot be read, so that the search is not sent without it
function whereParams() {
  const out = {};
  if (state.bbox) out.bbox = state.bbox.join(",");
  const near = $("near").value.trim();
  if (near) out.near = nearParam(near);
  for (const [id, name] of [["time-start", "from"], ["time-end", "to"]]) {
    // a half-typed date reads as "" (no period): the search would ignore what was typed
    if ($(id).validity.badInput) throw new Error(name + ": the date is incomplete; finish it or clear it");
  }
  const start = $("time-start").value, end = $("time-end").value;
  if (start || end) out.time = (start || "..") + "/" + (end || "..");
  const radius = $("radius").value.trim();
  if (radius !== "" || $("radius").validity.badInput) {
    if (!/^[0-9]+$/.test(radius)) throw new Error("max distance: give a whole number of bits (0 or more), or leave it empty");
    out.radius = Number(radius);
  }
  return out;
}

// "lon, lat, km" (commas or spaces) as the API's "lon,lat,metres"
function nearParam(text) {
  const parts = text.split(/\s*,\s*|\s+/);
  const nums = parts.map(Number);
  // decimal numbers only (Number() also reads "0x10" as 16), three of them, no empty one
  if (parts.length !== 3 || parts.some((x) => !/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(x)) ||
      nums.some((x) => !Number.isFinite(x))) {
    throw new Error("near: give longitude, latitude and kilometres, e.g. 1.44, 43.6, 5");
  }
  if (nums[2] < 0) throw new Error("near: the distance is in kilometres, 0 or more");
  return `${nums[0]},${nums[1]},${nums[2] * 1000}`;
}

// the search mode: "appearance" when the toggle is on, else the default (not sent)
function modeParam() {
  return $("appearance").checked && !$("appearance").disabled ? "appearance" : null;
}

function whereText(where) {
  const parts = [];
  if (where.bbox) parts.push("in the drawn box");
  if (where.near) {
    const [lon, lat, metres] = where.near.split(",").map(Number);
    parts.push(`within ${metres / 1000} km of ${lon}, ${lat}`);
  }
  if (where.radius !== undefined) parts.push("distance at most " + where.radius);
  if (where.time) parts.push("time " + where.time.split("/").map((t) => (t === ".." ? "any" : t)).join(" to "));
  return parts.length ? " (" + parts.join(", ") + ")" : "";
}

// paging: true for "More results" (the same query, a larger k). A failed page keeps the hits
// shown, which are still this query's; any other failed search clears them, so that no hit is
// ever shown under a query (or filter) it does not belong to.
async function runSearch(paging) {
  if (!state.query) return;
  const seq = ++state.searchSeq;
  const current = () => seq === state.searchSeq;
  const k = state.k;
  const filter = filterParam();
  let where;
  try {
    where = whereParams();
  } catch (err) {   // a box the user must correct: no search, and no hits of another query
    if (!paging) { render([]); $("more").hidden = true; }
    setStatus(err.message, true);
    return;
  }
  const mode = modeParam();
  if (mode) where.mode = mode;
  setStatus("searching…");
  $("more").disabled = true;
  const t0 = performance.now();
  try {
    let res;
    if (state.query.kind === "url") {
      const body = { url: state.query.url, k, ...where };
      if (filter) body.filter = filter;
      res = await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    } else {
      const params = new URLSearchParams({ k: String(k), ...where });
      if (filter) params.set("filter", JSON.stringify(filter));
      res = await api("/v1/search?" + params, {
        method: "POST",
        // an image body whatever the file's type: a .json file sent as application/json was
        // read as a JSON request ("Extra inputs are not permitted")
        headers: { "Content-Type": (state.query.blob.type || "").startsWith("image/")
          ? state.query.blob.type : "application/octet-stream" },
        body: state.query.blob,
      });
    }
    const hits = (await res.json()).hits;
    if (!current()) return;   // a newer search started meanwhile: the grid is its own
    render(hits);
    const ms = Math.round(performance.now() - t0);
    setStatus(`${hits.length} hit${hits.length === 1 ? "" : "s"} in ${ms} ms` +
              (filter ? ` (label ${filter.label})` : "") + whereText(where) +
              (mode ? " by appearance" : ""));
    const maxK = state.info ? state.info.limits.max_k : k;
    $("more").hidden = hits.length < k || k >= maxK;
  } catch (err) {
    if (!current()) return;
    if (!paging) {
      render([]);
      $("more").hidden = true;
    }
    // the service names an uploaded body by its size: name the user's file instead
    const text = state.query.kind === "file"
      ? err.message.replace(/<request body, \d+ bytes>/, "\u201c" + state.query.name + "\u201d") : err.message;
    setStatus(text, true);
    $("status").title = err.kind || "";
  } finally {
    if (current()) $("more").disabled = false;
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
  const rows = [["id", hit.id]].concat(hit.time ? [["time", hit.time]] : []);
  // the metadata may repeat a field shown above (a manifest's `time` column is kept there too)
  const shown = new Set(rows.map(([k]) => k));
  const extra = Object.entries(hit.metadata || {}).filter(([k]) => !shown.has(k));
  rows.push(...extra.slice(0, 6).map(([k, v]) => [k, fmt(v)]));
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v; dd.title = v;
    meta.append(dt, dd);
  }
  body.append(rank, label, dist);
  if (hit.fine_distance !== undefined && hit.fine_distance !== null) {
    const fineDist = document.createElement("p");
    fineDist.className = "fine-distance";
    fineDist.textContent = "fine distance " + hit.fine_distance;
    body.append(fineDist);
  }
  body.append(meta);
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
// Equirectangular lon/lat plot zoomed to the hits' footprints (and the drawn box), with a
// graticule. A footprint whose west > east crosses the antimeridian: longitudes are unwrapped
// around the best hit so that it is drawn in one piece. Dragging on the plot draws a box that
// filters the search (sent as `bbox`); a click on a footprint shows its card.
const MAP_W = 320, MAP_H = 240;

// a [w, s, e, n] on the globe: lon in [-180, 180], lat in [-90, 90], s <= n
function onGlobe(b) {
  return Array.isArray(b) && b.length === 4 && b.every(Number.isFinite) && Math.abs(b[0]) <= 180 &&
    Math.abs(b[2]) <= 180 && b[1] >= -90 && b[3] <= 90 && b[1] <= b[3];
}

// the hit's footprint; else (a collection made before place fields) its metadata's, when that
// is on the globe and the georeferencing gave no footprint_error (metres tagged as degrees
// zoomed the map out to 5e6 degrees, every real footprint a dot)
function footprint(hit) {
  const f = hit.footprint;
  if (onGlobe(f)) return { w: f[0], s: f[1], e: f[2], n: f[3] };
  const meta = hit.metadata;
  if (!meta || meta.footprint_error) return null;
  const b = meta.lonlat_bounds || (meta.crs === "EPSG:4326" ? meta.bounds : null);
  if (onGlobe(b)) return { w: b[0], s: b[1], e: b[2], n: b[3] };
  const p = meta.lonlat;
  if (Array.isArray(p) && p.length === 2 && onGlobe([p[0], p[1], p[0], p[1]])) return { w: p[0], s: p[1], e: p[0], n: p[1] };
  return null;
}

// a box as a continuous lon interval [w, e] (e >= w) shifted by 360s to lie near lon `ref`
function unwrap(f, ref) {
  const e = f.e < f.w ? f.e + 360 : f.e;
  const shift = ref === null ? 0 : Math.round((ref - (f.w + e) / 2) / 360) * 360;
  return { w: f.w + shift, s: f.s, e: e + shift, n: f.n };
}

function niceStep(span) {
  const raw = span / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
  return 10 * p;
}

function wrapLon(lon) {
  return ((lon + 180) % 360 + 360) % 360 - 180;
}

function drawMap(hits) {
  state.hits = hits;
  const svg = $("map");
  const raw = hits.map((h, i) => ({ hit: h, rank: i + 1, f: footprint(h) })).filter((x) => x.f);
  $("map-panel").hidden = raw.length === 0 && !state.bbox;
  svg.replaceChildren();
  if (!raw.length && !state.bbox) { state.proj = null; return; }
  const first = raw.length ? raw[0].f : { w: state.bbox[0], s: state.bbox[1], e: state.bbox[2], n: state.bbox[3] };
  const ref = (first.w + (first.e < first.w ? first.e + 360 : first.e)) / 2;
  const shapes = raw.map((x) => ({ ...x, f: unwrap(x.f, ref) }));
  const box = state.bbox ? unwrap({ w: state.bbox[0], s: state.bbox[1], e: state.bbox[2], n: state.bbox[3] }, ref) : null;
  const all = shapes.map((x) => x.f).concat(box ? [box] : []);
  let w = Math.min(...all.map((f) => f.w)), e = Math.max(...all.map((f) => f.e));
  let s = Math.min(...all.map((f) => f.s)), n = Math.max(...all.map((f) => f.n));
  const pad = Math.max(e - w, n - s, 0.01) * 0.1;
  w -= pad; e += pad; s = Math.max(-90, s - pad); n = Math.min(90, n + pad);
  const kx = Math.max(0.05, Math.cos(((s + n) / 2) * Math.PI / 180));   // true at mid-latitude
  const scale = Math.min(MAP_W / ((e - w) * kx), MAP_H / Math.max(n - s, 1e-6));
  const cx = (w + e) / 2, cy = (s + n) / 2;
  const X = (lon) => MAP_W / 2 + (lon - cx) * kx * scale;
  const Y = (lat) => MAP_H / 2 - (lat - cy) * scale;
  state.proj = { X, Y, lon: (x) => cx + (x - MAP_W / 2) / (kx * scale), lat: (y) => cy - (y - MAP_H / 2) / scale };
  const add = (tag, attrs, parent) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    (parent || svg).appendChild(el);
    return el;
  };
  const step = niceStep(Math.max(e - w, n - s));
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const lon0 = state.proj.lon(0), lat0 = state.proj.lat(MAP_H);
  for (let lon = Math.ceil(lon0 / step) * step; X(lon) < MAP_W; lon += step) {
    add("line", { x1: X(lon), x2: X(lon), y1: 0, y2: MAP_H, class: "grid" });
    add("text", { x: X(lon) + 2, y: MAP_H - 3, class: "grid-label" }).textContent = wrapLon(lon).toFixed(decimals) + "°";
  }
  for (let lat = Math.ceil(lat0 / step) * step; Y(lat) > 0; lat += step) {
    add("line", { x1: 0, x2: MAP_W, y1: Y(lat), y2: Y(lat), class: "grid" });
    add("text", { x: 2, y: Y(lat) - 2, class: "grid-label" }).textContent = lat.toFixed(decimals) + "°";
  }
  if (box) {
    add("rect", { x: X(box.w), y: Y(box.n), width: Math.max(1, X(box.e) - X(box.w)),
                  height: Math.max(1, Y(box.s) - Y(box.n)), class: "bbox-filter" });
  }
  for (const { hit, rank, f } of shapes.reverse()) {   // best hit drawn last, on top
    const width = Math.max(3, X(f.e) - X(f.w)), height = Math.max(3, Y(f.s) - Y(f.n));
    const r = add("rect", { x: X(f.w), y: Y(f.n), width, height, class: "footprint", "data-id": hit.id });
    add("title", {}, r).textContent = `#${rank} ${hit.label} (distance ${hit.distance})` + (hit.time ? " " + hit.time : "");
    r.addEventListener("mouseenter", () => highlight(hit.id, true));
    r.addEventListener("mouseleave", () => highlight(hit.id, false));
  }
}

// ------------------------------------------------------------------ drawing a box on the map
function svgPoint(svg, ev) {
  const pt = svg.createSVGPoint();
  pt.x = ev.clientX; pt.y = ev.clientY;
  const p = pt.matrixTransform(svg.getScreenCTM().inverse());
  return { x: Math.min(MAP_W, Math.max(0, p.x)), y: Math.min(MAP_H, Math.max(0, p.y)) };
}

function setupDrawing() {
  const svg = $("map");
  let drag = null;
  svg.addEventListener("mousedown", (ev) => {
    if (ev.button !== 0 || !state.proj) return;
    ev.preventDefault();
    const p = svgPoint(svg, ev);
    const el = document.createElementNS(SVG, "rect");
    el.setAttribute("class", "drawing");
    svg.appendChild(el);
    drag = { p0: p, p1: p, el, target: ev.target };
  });
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    drag.p1 = svgPoint(svg, ev);
    const x = Math.min(drag.p0.x, drag.p1.x), y = Math.min(drag.p0.y, drag.p1.y);
    for (const [k, v] of Object.entries({ x, y, width: Math.abs(drag.p1.x - drag.p0.x), height: Math.abs(drag.p1.y - drag.p0.y) })) {
      drag.el.setAttribute(k, v);
    }
  });
  window.addEventListener("mouseup", () => {
    if (!drag) return;
    const d = drag;
    drag = null;
    d.el.remove();
    if (Math.abs(d.p1.x - d.p0.x) < 4 && Math.abs(d.p1.y - d.p0.y) < 4) {   // a click, not a drag
      if (d.target.classList && d.target.classList.contains("footprint")) showCard(d.target.dataset.id);
      return;
    }
    const P = state.proj;
    const lons = [P.lon(d.p0.x), P.lon(d.p1.x)], lats = [P.lat(d.p0.y), P.lat(d.p1.y)];
    const west = Math.min(...lons), east = Math.max(...lons);
    const r6 = (v) => Math.round(v * 1e6) / 1e6;
    const s = r6(Math.max(-90, Math.min(...lats))), n = r6(Math.min(90, Math.max(...lats)));
    setBox(east - west >= 360 ? [-180, s, 180, n] : [r6(wrapLon(west)), s, r6(wrapLon(east)), n]);
  });
}

// the box filter: set (and search again) or cleared (null)
function setBox(box) {
  state.bbox = box;
  const text = $("bbox-value");
  text.textContent = box ? box.map((v) => v.toFixed(4)).join(", ") : "none (drag on the map to draw one)";
  text.dataset.bbox = box ? box.join(",") : "";
  $("bbox-clear").hidden = !box;
  if (state.query) newSearch(); else drawMap(state.hits);
}

function highlight(id, on) {
  for (const el of document.querySelectorAll(".hit-card, #map .footprint")) {
    if (el.dataset.id === id) el.classList.toggle("hl", on);
  }
}

// a click on a footprint: bring its card into view and mark it for a moment
function showCard(id) {
  const el = [...document.querySelectorAll(".hit-card")].find((c) => c.dataset.id === id);
  if (!el) return;
  el.scrollIntoView({ block: "nearest", behavior: "smooth" });
  el.classList.add("picked");
  setTimeout(() => el.classList.remove("picked"), 1500);
}

// ------------------------------------------------------------------ query input
function setFileQuery(file) {
  if (!file) return;
  state.query = { kind: "file", blob: file, name: file.name };
  const img = $("query-img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.hidden = false;
  // a browser shows no TIFF (nor a file that is not an image): say so instead of a broken image
  img.onerror = () => {
    img.hidden = true;
    $("query-name").textContent = file.name + " (no preview)";
    $("query-name").title = "the browser cannot show this file; the service reads it";
  };
  img.src = URL.createObjectURL(file);
  $("query-name").textContent = file.name;
  $("query-name").title = "";
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
  drop.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("file").click(); }
  });
  // a file dropped on the zone or anywhere beside it is the query (beside it, the browser
  // would open the file and leave the page); files only: text or a link dragged into a box
  // is inserted as usual
  const carriesFiles = (ev) => !!ev.dataTransfer && Array.from(ev.dataTransfer.types).includes("Files");
  document.addEventListener("dragover", (ev) => { if (carriesFiles(ev)) ev.preventDefault(); });
  document.addEventListener("drop", (ev) => {
    if (!carriesFiles(ev)) return;
    ev.preventDefault();
    drop.classList.remove("over");
    setFileQuery(ev.dataTransfer.files[0]);
  });
  $("url-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const url = $("url").value.trim();
    if (!url) return;
    state.query = { kind: "url", url };
    $("query-preview").hidden = true;
    newSearch();
  });
  $("k").addEventListener("change", newSearch);
  $("appearance").addEventListener("change", newSearch);
  $("label").addEventListener("change", newSearch);
  $("time-start").addEventListener("change", newSearch);
  $("time-end").addEventListener("change", newSearch);
  $("near").addEventListener("change", newSearch);
  $("radius").addEventListener("change", newSearch);
  $("bbox-clear").addEventListener("click", () => setBox(null));
  setupDrawing();
  $("more").addEventListener("click", () => {
    const maxK = state.info ? state.info.limits.max_k : state.k + state.page;
    state.k = Math.min(maxK, state.k + state.page);
    runSearch(true);
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
