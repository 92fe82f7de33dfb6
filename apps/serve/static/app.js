// effnet-serve's page: a photo (chosen, dropped or pasted) or camera frames go to
// POST /v1/classify; the answer is drawn as bars. No framework, nothing from a CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { stream: null, live: false, frameTimes: [], frames: 0, previewUrl: null, pending: null };

// -- the token (when the server was started with --token-file) --------------------------------
// Asked for once, kept in sessionStorage: it lasts as long as the tab, and no other site sees it.
const TOKEN_KEY = "effnet-serve-token";

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("token-message").textContent = message;
  $("token-form").hidden = false;
  $("token").focus();
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  $("token-form").hidden = true;
  describeModel();
  if (state.pending) classify(state.pending.blob, state.pending.name);      // the photo refused before
});

function topK() { return Number($("top-k").value); }

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function classify(blob, name) {
  const started = performance.now();
  let response, body;
  try {
    response = await fetch(`/v1/classify?top_k=${topK()}&name=${encodeURIComponent(name)}`, {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": blob.type || "application/octet-stream" },
      body: blob,
    });
    body = await response.json();
  } catch (err) {
    showError(`The server did not answer (${err.message}).`);
    return null;
  }
  if (response.status === 401) {
    if (state.live) toggleLive();
    state.pending = { blob, name };
    askForToken(body.error);
    showError("");
    return null;
  }
  if (!response.ok) {
    showError(body.error || `HTTP ${response.status}`);
    return null;
  }
  state.pending = null;
  showError("");
  render(body, performance.now() - started);
  return body;
}

function render(result, roundTripMs) {
  const list = $("results");
  list.replaceChildren();
  for (const c of result.categories) {
    const item = document.createElement("li");
    item.dataset.index = c.index;
    item.dataset.score = c.score;
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = c.label;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(100 * c.score).toFixed(1)} %`;
    row.append(label, score);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${Math.max(0.5, 100 * c.score)}%`;
    bar.append(fill);
    item.append(row, bar);
    list.append(item);
  }
  const top = result.categories[0];
  $("top-label").textContent = top ? top.label : "(no class above the threshold)";
  $("top-label").dataset.index = top ? top.index : "";
  $("timings").textContent = `preprocess ${result.preprocess_ms.toFixed(1)} ms · inference ` +
    `${result.inference_ms.toFixed(1)} ms · round trip ${roundTripMs.toFixed(0)} ms`;
}

// -- photos: chosen, dropped or pasted --------------------------------------------------------
function usePhoto(file) {
  if (!file) return;
  if (state.live) toggleLive();
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  $("preview").src = state.previewUrl;
  $("preview").hidden = false;
  $("video").hidden = true;
  $("caption").textContent = file.name || "pasted image";
  classify(file, file.name || "pasted");
}

$("file").addEventListener("change", (e) => usePhoto(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  usePhoto(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) usePhoto(item.getAsFile());
});

// -- the camera ---------------------------------------------------------------------------------
async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("This browser allows the camera only on pages served over HTTPS or from localhost: " +
      "start effnet-serve with --tls-cert/--tls-key, or reach it through an SSH tunnel (see the README).");
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "environment", width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (err) {
    showError(`No camera: ${err.message}`);
    return;
  }
  const video = $("video");
  video.srcObject = state.stream;
  await video.play();
  video.hidden = false;
  $("preview").hidden = true;
  $("caption").textContent = "camera";
  for (const id of ["snap", "live", "camera-stop"]) $(id).disabled = false;
  $("camera-start").disabled = true;
  showError("");
}

function stopCamera() {
  if (state.live) toggleLive();
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("video").hidden = true;
  for (const id of ["snap", "live", "camera-stop"]) $(id).disabled = true;
  $("camera-start").disabled = false;
}

const canvas = document.createElement("canvas");

function grabFrame() {
  const video = $("video");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
}

function countFrame() {
  const now = performance.now();
  state.frames += 1;
  state.frameTimes.push(now);
  while (state.frameTimes.length && now - state.frameTimes[0] > 2000) state.frameTimes.shift();
  const span = (now - state.frameTimes[0]) / 1000;
  const fps = span > 0 ? (state.frameTimes.length - 1) / span : 0;
  $("fps").dataset.frames = state.frames;
  $("fps").dataset.fps = fps.toFixed(2);
  $("fps").textContent = `live: ${fps.toFixed(1)} frames/s (${state.frames} classified)`;
}

async function liveLoop() {
  while (state.live && state.stream) {
    const frame = await grabFrame();
    const answer = frame && await classify(frame, "camera");
    if (answer) countFrame();
    else await new Promise((r) => setTimeout(r, 500));      // the server is busy or gone: back off
  }
}

function toggleLive() {
  state.live = !state.live;
  $("live").setAttribute("aria-pressed", String(state.live));
  if (state.live) {
    state.frameTimes = [];
    liveLoop();
  }
}

$("camera-start").addEventListener("click", startCamera);
$("camera-stop").addEventListener("click", stopCamera);
$("live").addEventListener("click", toggleLive);
$("snap").addEventListener("click", async () => {
  const frame = await grabFrame();
  if (frame) classify(frame, "camera");
});

// -- the model's description -----------------------------------------------------------------
async function describeModel() {
  let response, m;
  try {
    response = await fetch("/v1/model", { headers: authHeaders() });
    m = await response.json();
  } catch (err) {
    $("model").textContent = "(the model's description is unavailable)";
    return;
  }
  if (response.status === 401) {
    $("model").textContent = "(the model's description needs the token)";
    askForToken(m.error);
    return;
  }
  if (!response.ok) {
    $("model").textContent = `(the model's description is unavailable: ${m.error || response.status})`;
    return;
  }
  const what = [m.variant, m.precision].filter(Boolean).join(" ") || m.model;
  $("model").textContent = `${what} · ${m.input_size} px · ${m.labels} classes · ${m.backend}, ` +
    `${m.workers} worker(s) × ${m.threads} thread(s) · ${m.model}`;
  // a model of few classes: offer no more than it has (the server refuses more)
  const select = $("top-k"), want = Math.min(5, m.labels);
  for (const option of [...select.options]) {
    if (Number(option.value) > m.labels) option.remove();
  }
  if (![...select.options].some((o) => Number(o.value) === want)) select.add(new Option(String(want), String(want)));
  select.value = String(want);
}

describeModel();
