// The postergenre page: upload a poster to POST predict and draw one bar per genre;
// click a bar to POST explain and lay that genre's heat map over the poster.
"use strict";

const SHOWN = 10; // bars shown before "show all"
const $ = (id) => document.getElementById(id);
let thresholds = {};
let showAll = false;
let last = null;
let lastFile = null;
let shown = null; // the genre whose heat map is over the poster
let heatmaps = {}; // genre -> data URI, for the current poster

fetch("genres").then((r) => r.json()).then((j) => { thresholds = j.thresholds; });
fetch("health").then((r) => r.json()).then((j) => {
  $("model").textContent = `Model: ${j.model}, ${j.genres} genres \u00b7 `;
});

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function upload(file) {
  if (!file) return;
  setStatus(`Scoring ${file.name}\u2026`);
  const body = new FormData();
  body.append("file", file, file.name);
  const title = $("title").value.trim();
  if (title) body.append("title", title);
  let response, result;
  try {
    response = await fetch("predict", { method: "POST", body });
    result = await response.json();
  } catch (err) {
    setStatus(`Could not reach the server (${err.message}).`, true);
    return;
  }
  if (!response.ok) {
    $("result").hidden = true;
    setStatus(`Error ${response.status}: ${result.detail || response.statusText}`, true);
    return;
  }
  const poster = $("poster");
  if (poster.src) URL.revokeObjectURL(poster.src);
  poster.src = URL.createObjectURL(file);
  $("filename").textContent = result.title ? `${result.title} (${result.path})` : result.path;
  $("signals").textContent = result.signals.includes("title")
    ? "Scored from the poster and its title."
    : title ? "Scored from the poster only (this model has no title model)." : "";
  last = result;
  lastFile = file;
  heatmaps = {};
  showHeatmap(null);
  render();
  setStatus("");
  $("result").hidden = false;
}

function render() {
  const top = new Set(last.top.map(([genre]) => genre));
  const ranked = Object.entries(last.scores).sort((a, b) => b[1] - a[1]);
  const hits = ranked.filter(([g, p]) => p >= (thresholds[g] ?? 0.5)).map(([g]) => g);
  $("summary").textContent = hits.length
    ? `Predicted: ${hits.join(", ")}`
    : "No genre reaches its tuned threshold; the three most likely are highlighted.";

  const bars = $("bars");
  bars.replaceChildren();
  for (const [genre, p] of showAll ? ranked : ranked.slice(0, SHOWN)) {
    const t = thresholds[genre] ?? 0.5;
    const li = document.createElement("li");
    li.className = "bar";
    li.classList.toggle("top", top.has(genre));
    li.classList.toggle("hit", p >= t);
    li.dataset.genre = genre;
    li.dataset.p = p;
    li.classList.toggle("shown", genre === shown);
    li.title = `Show where the model saw ${genre}`;
    li.addEventListener("click", () => explain(genre));

    const name = document.createElement("span");
    name.className = "name";
    name.textContent = genre;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.style.left = `${(100 * t).toFixed(1)}%`;
    tick.title = `tuned threshold ${(100 * t).toFixed(0)}%`;
    track.append(fill, tick);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    li.append(name, track, value);
    bars.append(li);
  }
  const more = $("more");
  more.hidden = ranked.length <= SHOWN;
  more.textContent = showAll ? "Show fewer" : `Show all ${ranked.length} genres`;
}

function showHeatmap(genre) {
  shown = genre;
  const img = $("heatmap");
  img.hidden = genre === null;
  if (genre !== null) img.src = heatmaps[genre];
  $("explained").textContent = genre === null
    ? "Click a genre to see where the model saw it."
    : `Heat map: where the model saw ${genre} (Grad-CAM). Click it again to hide.`;
  for (const li of document.querySelectorAll("#bars li.bar")) {
    li.classList.toggle("shown", li.dataset.genre === genre);
  }
}

async function explain(genre) {
  if (genre === shown) { showHeatmap(null); return; }
  if (!(genre in heatmaps)) {
    setStatus(`Explaining ${genre}\u2026`);
    const body = new FormData();
    body.append("file", lastFile, lastFile.name);
    if (last.title) body.append("title", last.title);
    let response, result;
    try {
      response = await fetch(`explain?genre=${encodeURIComponent(genre)}`, { method: "POST", body });
      result = await response.json();
    } catch (err) {
      setStatus(`Could not reach the server (${err.message}).`, true);
      return;
    }
    if (!response.ok) {
      setStatus(`Error ${response.status}: ${result.detail || response.statusText}`, true);
      return;
    }
    heatmaps[genre] = result.explanations[0].heatmap;
    setStatus("");
  }
  showHeatmap(genre);
}

$("more").addEventListener("click", () => { showAll = !showAll; render(); });
$("file").addEventListener("change", (e) => upload(e.target.files[0]));

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => { e.preventDefault(); upload(e.dataTransfer.files[0]); });
