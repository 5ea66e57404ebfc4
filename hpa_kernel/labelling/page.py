"""The labelling page: one self-contained HTML document (no external resources), served at ``/``.

Keys: ``1``-``5`` score the cell shown, ``s`` or Space skips it, ``u``, Backspace or Ctrl-Z
undoes the last answer for the class, ``c`` cycles the brightness gain (1, 2, 4, 8). Key presses
are queued and sent one at a time, in order, so fast typing loses nothing. The page exposes
``window.hpaLabel`` (the state, the number of requests in flight) for the browser test.
"""

from __future__ import annotations

__all__ = ["PAGE_HTML"]

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hpa-kernel label</title>
<style>
  body { background: #111; color: #ddd; font: 15px/1.4 system-ui, sans-serif; margin: 0; padding: 16px 24px; }
  header { display: flex; gap: 24px; align-items: baseline; flex-wrap: wrap; }
  h1 { font-size: 22px; margin: 0; color: #fff; }
  #description { color: #bbb; max-width: 920px; margin: 6px 0 12px; }
  #images { display: flex; gap: 12px; flex-wrap: wrap; }
  figure { margin: 0; }
  figure img { width: 448px; height: 448px; object-fit: contain; background: #000; display: block; image-rendering: auto; }
  figcaption { color: #999; font-size: 13px; text-align: center; }
  #progress { width: 920px; max-width: 100%; height: 8px; background: #333; margin: 8px 0; }
  #bar { height: 100%; background: #4a4; width: 0; }
  #keys { color: #999; margin-top: 10px; }
  kbd { border: 1px solid #666; border-radius: 3px; padding: 0 5px; color: #fff; }
  #message { color: #8c8; min-height: 1.4em; }
  #error { color: #f66; min-height: 1.4em; }
  #answer { color: #fc6; }
  select { font-size: 15px; }
</style>
</head>
<body>
<header>
  <h1 id="class-name">loading...</h1>
  <label>class <select id="class-select"></select></label>
  <span>labeller: <b id="labeller"></b></span>
  <span id="cell-info"></span>
  <span id="answer"></span>
</header>
<div id="description"></div>
<div id="counts"></div>
<div id="progress"><div id="bar"></div></div>
<div id="images">
  <figure><img id="composite" alt="composite"><figcaption>composite: red microtubules, green protein,
    blue nucleus, yellow ER</figcaption></figure>
  <figure><img id="green" alt="green channel"><figcaption>green (protein) channel alone</figcaption></figure>
</div>
<div id="done" hidden></div>
<div id="message"></div>
<div id="error"></div>
<div id="keys"><kbd>1</kbd>-<kbd>5</kbd> how sure the cell shows the class (1 = surely not, 5 = surely) &nbsp;
  <kbd>s</kbd>/<kbd>Space</kbd> skip &nbsp; <kbd>u</kbd>/<kbd>Backspace</kbd> undo &nbsp;
  <kbd>c</kbd> brightness (<span id="gain">1</span>x)</div>
<script>
"use strict";
const GAINS = [1, 2, 4, 8];
const hpaLabel = { state: null, pending: 0, gain: 1, classId: null, errors: 0 };
window.hpaLabel = hpaLabel;
const $ = (id) => document.getElementById(id);
let queue = Promise.resolve();
const preloaded = [];

async function api(method, url, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
  return data;
}

function withGain(url) { return url + "&gain=" + hpaLabel.gain; }

function render(state) {
  hpaLabel.state = state;
  hpaLabel.classId = state.class.id;
  $("class-name").textContent = state.class.name;
  $("description").textContent = state.class.description;
  $("labeller").textContent = state.labeller;
  const select = $("class-select");
  select.innerHTML = "";
  for (const c of state.classes) {
    const option = document.createElement("option");
    option.value = c.id;
    option.textContent = c.name + " (" + c.done + "/" + c.total + ")";
    option.selected = c.id === state.class.id;
    select.appendChild(option);
  }
  const p = state.progress;
  $("counts").textContent = "done " + p.done + " of " + p.total + " (scored " + p.scored + ", skipped " +
    p.skipped + "), remaining " + p.remaining;
  $("bar").style.width = (p.total ? 100 * p.done / p.total : 0) + "%";
  $("message").textContent = state.message || "";
  $("gain").textContent = hpaLabel.gain;
  const cell = state.cell;
  $("images").hidden = !cell;
  $("done").hidden = !!cell;
  if (cell) {
    $("cell-info").textContent = "image " + cell.image_id + ", cell " + cell.cell_id + " (" + cell.position +
      " of " + p.total + ")";
    $("answer").textContent = cell.answer === null ? "" : "current answer: " + cell.answer;
    $("composite").src = withGain(cell.urls.composite);
    $("green").src = withGain(cell.urls.green);
    document.body.dataset.cell = cell.image_id + "/" + cell.cell_id;
  } else {
    $("cell-info").textContent = "";
    $("answer").textContent = "";
    const next = state.classes.find((c) => c.done < c.total);
    $("done").textContent = "All " + p.total + " cells of " + state.class.name + " are done." +
      (next ? " Next: pick " + next.name + " above." : " Every class is done.");
    document.body.dataset.cell = "";
  }
  preloaded.length = 0;
  for (const urls of state.preload) {
    for (const url of [urls.composite, urls.green]) {
      const image = new Image();
      image.src = withGain(url);
      preloaded.push(image);
    }
  }
}

function enqueue(task) {
  hpaLabel.pending += 1;
  queue = queue.then(task).then(() => { $("error").textContent = ""; }).catch((error) => {
    hpaLabel.errors += 1;
    $("error").textContent = String(error.message || error);
  }).finally(() => { hpaLabel.pending -= 1; });
}

function load() {
  enqueue(async () => {
    const classParam = hpaLabel.classId === null ? "" : "?class=" + encodeURIComponent(hpaLabel.classId);
    render(await api("GET", "/api/state" + classParam));
  });
}

function answer(score) {
  enqueue(async () => {
    const cell = hpaLabel.state && hpaLabel.state.cell;
    if (!cell) return;
    const body = { class_id: hpaLabel.classId, image_id: cell.image_id, cell_id: cell.cell_id };
    if (score === null) render(await api("POST", "/api/skip", body));
    else render(await api("POST", "/api/score", Object.assign(body, { score })));
  });
}

function undo() {
  enqueue(async () => { render(await api("POST", "/api/undo", { class_id: hpaLabel.classId })); });
}

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.metaKey) return;
  const key = event.key;
  if (event.ctrlKey) {
    if (key === "z" || key === "Z") { event.preventDefault(); undo(); }
    return;
  }
  if (key >= "1" && key <= "5" && key.length === 1) answer(Number(key));
  else if (key === "s" || key === "S" || key === " ") answer(null);
  else if (key === "u" || key === "U" || key === "Backspace") undo();
  else if (key === "c" || key === "C") {
    hpaLabel.gain = GAINS[(GAINS.indexOf(hpaLabel.gain) + 1) % GAINS.length];
    if (hpaLabel.state) render(hpaLabel.state);
  } else return;
  event.preventDefault();
});

$("class-select").addEventListener("change", (event) => {
  hpaLabel.classId = Number(event.target.value);
  history.replaceState(null, "", "?class=" + hpaLabel.classId);
  event.target.blur();
  load();
});

const initial = new URLSearchParams(location.search).get("class");
hpaLabel.classId = initial === null ? null : initial;
load();
</script>
</body>
</html>
"""
