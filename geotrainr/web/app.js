// The page of `geotrainr serve`: sends photos to /predict and /explain on the same server and draws the
// answer on an equirectangular map (the server's Blue Marble, or a bare grid without it). No network
// beyond this server: no CDN, fonts or tiles.
"use strict";

const EUROPE = [-25, 45, 34, 72]; // lon min, lon max, lat min, lat max: the default view, as geotrainr's maps
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let card = null;
let photos = [];
let chosen = 0;

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function el(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

async function loadCard() {
  try {
    const r = await fetch("/card");
    card = await r.json();
    const demo = (card.data.sources || []).some((s) => s === "bluemarble" || s === "relief");
    $("model").textContent = `${card.task} model · ${card.classes.length} countries · ${card.backbone} · ` +
      `${card.input.image_size} px input` + (demo ? " · trained on the offline aerial demo data, not street photos" : "");
  } catch (e) {
    $("model").textContent = "the model's card could not be read";
  }
  drawMap(null);
}

// --- geometry -------------------------------------------------------------------------------------

const rad = (d) => (d * Math.PI) / 180;
const deg = (r) => (r * 180) / Math.PI;

function haversineKm(lat1, lon1, lat2, lon2) {
  const a = Math.sin(rad(lat2 - lat1) / 2) ** 2 +
    Math.cos(rad(lat1)) * Math.cos(rad(lat2)) * Math.sin(rad(lon2 - lon1) / 2) ** 2;
  return 2 * card.earth_radius_km * Math.asin(Math.sqrt(Math.min(1, a)));
}

function circle(lat, lon, km, n = 96) {
  // the points at `km` from (lat, lon) along every bearing: a circle on the globe, drawn in degrees
  const d = km / card.earth_radius_km;
  const pts = [];
  for (let i = 0; i <= n; i++) {
    const b = (2 * Math.PI * i) / n;
    const la = Math.asin(Math.sin(rad(lat)) * Math.cos(d) + Math.cos(rad(lat)) * Math.sin(d) * Math.cos(b));
    const lo = rad(lon) + Math.atan2(Math.sin(b) * Math.sin(d) * Math.cos(rad(lat)), Math.cos(d) - Math.sin(rad(lat)) * Math.sin(la));
    pts.push([deg(la), ((deg(lo) + 540) % 360) - 180]);
  }
  return pts;
}

function spreadKm(record) {
  // how far the model's probability mass lies from the point: the probability-weighted RMS distance of
  // the top-k countries' centres (null for models without class probabilities)
  const rows = (record.top_k || []).filter((t) => card.centres[t.country]);
  const mass = rows.reduce((s, t) => s + t.probability, 0);
  if (!rows.length || mass <= 0) return null;
  const ms = rows.reduce((s, t) => {
    const [la, lo] = card.centres[t.country];
    return s + t.probability * haversineKm(record.lat, record.lon, la, lo) ** 2;
  }, 0) / mass;
  return Math.sqrt(ms);
}

// --- the map --------------------------------------------------------------------------------------

function extentOf(points) {
  let [x0, x1, y0, y1] = EUROPE;
  for (const [la, lo] of points) {
    x0 = Math.min(x0, lo - 4); x1 = Math.max(x1, lo + 4);
    y0 = Math.min(y0, la - 4); y1 = Math.max(y1, la + 4);
  }
  return [Math.max(-180, x0), Math.min(180, x1), Math.max(-90, y0), Math.min(90, y1)];
}

function drawMap(record) {
  const svg = $("map");
  svg.replaceChildren();
  const centres = record ? (record.top_k || []).filter((t) => card && card.centres[t.country]) : [];
  const spread = record ? spreadKm(record) : null;
  let ring = [];
  if (record && spread && spread > 1) ring = circle(record.lat, record.lon, spread);
  const pts = record ? [[record.lat, record.lon], ...centres.map((t) => card.centres[t.country]), ...ring] : [];
  const [x0, x1, y0, y1] = extentOf(pts);
  const w = x1 - x0, h = y1 - y0, unit = w / 100;
  svg.setAttribute("viewBox", `${x0} ${-y1} ${w} ${h}`);
  if (card && card.basemap) {
    el("image", { href: "/basemap.jpg", x: -180, y: -90, width: 360, height: 180, preserveAspectRatio: "none" }, svg);
    $("map-note").textContent = "";
  } else {
    $("map-note").textContent = "No base map installed (it comes with pip install 'geotrainr[demo]'): a bare grid instead.";
  }
  const grid = el("g", {}, svg);
  const step = w > 120 ? 30 : 10;
  for (let lo = Math.ceil(x0 / step) * step; lo <= x1; lo += step) {
    el("line", { class: "grid", x1: lo, x2: lo, y1: -y1, y2: -y0 }, grid);
    el("text", { class: "gridlabel", x: lo + unit * 0.4, y: -y0 - unit * 0.6, "font-size": unit * 1.8 }, grid).textContent = `${lo}°`;
  }
  for (let la = Math.ceil(y0 / step) * step; la <= y1; la += step) {
    el("line", { class: "grid", x1: x0, x2: x1, y1: -la, y2: -la }, grid);
    el("text", { class: "gridlabel", x: x0 + unit * 0.4, y: -la - unit * 0.4, "font-size": unit * 1.8 }, grid).textContent = `${la}°`;
  }
  if (!record) return;
  if (ring.length) {
    el("polygon", { class: "spread", points: ring.map(([la, lo]) => `${lo},${-la}`).join(" ") }, svg);
  }
  for (const t of centres) {
    const [la, lo] = card.centres[t.country];
    el("circle", { class: "centre", cx: lo, cy: -la, r: unit * (0.5 + 2.5 * Math.sqrt(t.probability)) }, svg);
    el("text", { class: "centre-label", x: lo + unit * 1.2, y: -la - unit * 0.8, "font-size": unit * 2 }, svg)
      .textContent = `${t.country} ${(100 * t.probability).toFixed(1)} %`;
  }
  const s = unit * 1.6, g = el("g", { id: "guess-marker" }, svg);
  for (const cls of ["guess", "guess-core"]) {
    el("line", { class: cls, x1: record.lon - s, y1: -record.lat - s, x2: record.lon + s, y2: -record.lat + s }, g);
    el("line", { class: cls, x1: record.lon - s, y1: -record.lat + s, x2: record.lon + s, y2: -record.lat - s }, g);
  }
}

// --- talking to the server ------------------------------------------------------------------------

function form(files) {
  const data = new FormData();
  for (const f of files) data.append("file", f, f.name);
  return data;
}

async function errorOf(response) {
  try {
    return (await response.json()).error || `HTTP ${response.status}`;
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

async function locate() {
  if (!photos.length) return;
  $("result").hidden = true;
  $("cam").hidden = true;
  status(photos.length > 1 ? `locating ${photos.length} views of one place…` : "locating…");
  let r;
  try {
    r = await fetch("/predict?top_k=5", { method: "POST", body: form(photos) });
  } catch (e) {
    status(`the server did not answer (${e})`, true);
    return;
  }
  if (!r.ok) {
    status(await errorOf(r), true);
    drawMap(null);
    return;
  }
  show(await r.json());
}

function show(record) {
  status(record.views ? `${record.views} views combined` : `${record.image}`);
  $("country").textContent = `${record.country} ${record.country_name || ""}`.trim();
  $("country").dataset.code = record.country;
  const p = $("probability");
  p.textContent = record.probability === null ? "not given by this model" : record.probability.toFixed(4);
  p.dataset.value = record.probability === null ? "" : String(record.probability);
  $("coords").textContent = `${record.lat.toFixed(3)}, ${record.lon.toFixed(3)}`;
  $("place").textContent = `${record.nearest_place} (${record.nearest_place_km} km)`;
  const spread = spreadKm(record);
  $("spread").textContent = spread ? `dashed circle: ${Math.round(spread).toLocaleString("en")} km, how far the top countries' ` +
    "centres lie from the point, weighted by their probabilities" : (card.guess_note || "");
  const body = $("topk").querySelector("tbody");
  body.replaceChildren();
  for (const t of record.top_k || []) {
    const tr = document.createElement("tr");
    tr.dataset.country = t.country;
    tr.dataset.probability = String(t.probability);
    const name = (card.class_names && card.class_names[t.country]) || "";
    tr.innerHTML = `<td>${t.country} ${name}</td><td class="p">${t.probability.toFixed(4)}</td>` +
      `<td style="width:45%"><div class="bar" style="width:${(100 * t.probability).toFixed(1)}%"></div></td>`;
    body.appendChild(tr);
  }
  $("topk").hidden = !(record.top_k || []).length;
  $("result").hidden = false;
  drawMap(record);
}

async function explain() {
  const photo = photos[chosen];
  if (!photo) return;
  $("explain").disabled = true;
  status(`Grad-CAM of ${photo.name}…`);
  try {
    const r = await fetch("/explain", { method: "POST", body: form([photo]) });
    if (!r.ok) {
      status(await errorOf(r), true);
      return;
    }
    const cam = $("cam");
    cam.src = URL.createObjectURL(await r.blob());
    cam.hidden = false;
    status(`Grad-CAM of ${photo.name}`);
  } finally {
    $("explain").disabled = false;
  }
}

function choose(files) {
  photos = Array.from(files).filter((f) => f.size > 0);
  chosen = 0;
  const thumbs = $("thumbs");
  thumbs.replaceChildren();
  photos.forEach((f, i) => {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f);
    img.title = f.name;
    img.className = i === 0 ? "chosen" : "";
    img.onclick = () => {
      chosen = i;
      thumbs.querySelectorAll("img").forEach((x, j) => { x.className = j === i ? "chosen" : ""; });
    };
    thumbs.appendChild(img);
  });
  locate();
}

$("file").addEventListener("change", (e) => choose(e.target.files));
$("explain").addEventListener("click", explain);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  choose(e.dataTransfer.files);
});
loadCard();
