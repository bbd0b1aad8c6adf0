// FastWan studio: submit jobs to the stub's /v1 API, watch them live, play the results.
// Plain JavaScript, no build step. The API judges every field: its 422 message is shown as it is.
"use strict";

const PRESETS = [
  { id: "landscape", label: "720p landscape", width: 1280, height: 704 },
  { id: "portrait", label: "720p portrait", width: 704, height: 1280 },
  { id: "480p", label: "480p", width: 832, height: 480 },
  { id: "square", label: "Square", width: 704, height: 704 },
  { id: "custom", label: "Custom" },
];
const NUMBER_FIELDS = ["width", "height", "num_frames", "fps", "seed", "num_inference_steps"];
const FORM_FIELDS = ["prompt", "negative_prompt", "image_url", ...NUMBER_FIELDS];
const ACTIVE = new Set(["queued", "claimed", "running"]);
const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;
// The page follows the stub's event stream (GET /v1/events); it polls only while the stream is down, and tries
// the stream again this often.
const STREAM_RETRY_MS = 10000;
const JOB_EVENTS = ["queued", "claimed", "dispatched", "running", "progress", "cancel_requested", "completed",
  "failed", "cancelled"];

const state = {
  jobs: new Map(), views: new Map(), cursor: 0, after: null, eventId: null, stream: null, streaming: false,
  retry: null, fetching: new Set(), image: null, imageUrl: null, timer: null, polling: false, workers: "",
};
const $ = (id) => document.getElementById(id);

// Seeds go up to 2^63: parse integers past 2^53 from their source text as BigInt, or they would be rounded.
function parseJson(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value) && context && context.source
      ? BigInt(context.source) : value);
}
async function readJson(response) { return parseJson(await response.text()); }

document.addEventListener("DOMContentLoaded", () => {
  buildPresets();
  wireImageInput();
  $("job-form").addEventListener("submit", submit);
  for (const name of ["width", "height"]) $(name).addEventListener("input", syncPresetFromSize);
  for (const name of ["num_frames", "fps"]) $(name).addEventListener("input", showDuration);
  $("jobs").addEventListener("click", onJobClick);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  state.observer = new IntersectionObserver(loadVisibleVideos, { rootMargin: "200px" });
  loadFormLimits().finally(pollNow);
});

// ---- the form --------------------------------------------------------------------------------------

async function loadFormLimits() {
  try {
    const response = await fetch("/v1/studio/form");
    if (!response.ok) return;
    const fields = await readJson(response);
    for (const name of NUMBER_FIELDS) {
      const spec = fields[name], input = $(name);
      if (spec.min !== null && spec.min !== undefined) input.min = spec.min;
      if (spec.max !== null && spec.max !== undefined) input.max = spec.max;
      input.step = spec.step;
      if (spec.default !== null && spec.default !== undefined) input.value = spec.default;
    }
    const prompt = fields.prompt && fields.prompt.default;
    if (prompt && !$("prompt").value) $("prompt").value = prompt;
    syncPresetFromSize();
    showDuration();
  } catch (err) {
    showConnection(`could not load the form's limits: ${err.message}`);
  }
}

function buildPresets() {
  const list = $("presets");
  for (const preset of PRESETS) {
    const id = `preset-${preset.id}`;
    const label = document.createElement("label");
    label.className = "preset";
    label.htmlFor = id;
    const input = document.createElement("input");
    Object.assign(input, { type: "radio", name: "preset", id, value: preset.id });
    input.addEventListener("change", () => applyPreset(preset));
    const size = preset.width ? `${preset.width}×${preset.height}` : "set below";
    label.append(input, ` ${preset.label} `);
    const small = document.createElement("span");
    small.className = "hint";
    small.textContent = size;
    label.append(small);
    list.append(label);
  }
}

function applyPreset(preset) {
  if (preset.width) {
    $("width").value = preset.width;
    $("height").value = preset.height;
  } else {
    $("advanced").open = true;
    $("width").focus();
  }
}

function syncPresetFromSize() {
  const w = Number($("width").value), h = Number($("height").value);
  const match = PRESETS.find((p) => p.width === w && p.height === h) || PRESETS[PRESETS.length - 1];
  $(`preset-${match.id}`).checked = true;
}

function showDuration() {
  const frames = Number($("num_frames").value), fps = Number($("fps").value);
  $("duration-hint").textContent = frames > 0 && fps > 0
    ? `${frames} frames at ${fps} fps: a ${(frames / fps).toFixed(1)} s video` : "";
}

function readForm() {
  const body = { prompt: $("prompt").value };
  const negative = $("negative_prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  for (const name of NUMBER_FIELDS) {
    const raw = $(name).value.trim();
    // Sent as typed, so the API names what is wrong with it: a number where it is one; an integer too large
    // for a JavaScript number (a 63-bit seed) as its digits, which the API reads exactly.
    if (raw !== "") body[name] = /^-?\d+$/.test(raw) && !Number.isSafeInteger(Number(raw)) ? raw
      : Number.isFinite(Number(raw)) ? Number(raw) : raw;
    else if ($(name).validity.badInput) body[name] = "not a number";
  }
  return body;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const button = $("submit");
  button.disabled = true;
  try {
    const body = readForm();
    if (state.image) {
      setSubmitStatus("uploading the image…");
      const upload = await fetch("/v1/uploads", {
        method: "POST",
        headers: { "Content-Type": state.image.type || "application/octet-stream" },
        body: state.image,
      });
      if (!upload.ok) return showErrors(await errorMessage(upload), "image_url");
      body.image_url = (await upload.json()).url;
    }
    setSubmitStatus("submitting…");
    const response = await fetch("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) return showErrors(await errorMessage(response));
    const { job_id: jobId } = await response.json();
    setSubmitStatus(`queued as ${jobId.slice(0, 8)}`);
    refresh();
  } catch (err) {
    showErrors(`could not reach the stub: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

async function errorMessage(response) {
  let payload = null;
  try { payload = await readJson(response); } catch { /* not JSON */ }
  if (payload && payload.error && payload.error.message) return payload.error.message;
  const detail = payload && payload.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "body"}: ${d.msg}`).join("; ");
  return `the stub answered HTTP ${response.status}`;
}

function showErrors(message, fallbackField) {
  setSubmitStatus("");
  const box = $("form-error");
  box.textContent = message;
  box.hidden = false;
  // "width: must be …; num_frames: must be …" → each part under its field too.
  for (const part of message.split("; ")) {
    const match = /^([a-z_]+): /.exec(part);
    const field = match && FORM_FIELDS.includes(match[1]) ? match[1] : fallbackField;
    if (!field) continue;
    $(`error-${field}`).textContent = part;
    const input = field === "image_url" ? $("image") : $(field);
    input.setAttribute("aria-invalid", "true");
    if (input.closest("details")) input.closest("details").open = true;
  }
}

function clearErrors() {
  $("form-error").hidden = true;
  $("form-error").textContent = "";
  for (const field of FORM_FIELDS) $(`error-${field}`).textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function setSubmitStatus(text) { $("submit-status").textContent = text; }

// ---- the start image -------------------------------------------------------------------------------

function wireImageInput() {
  const zone = $("dropzone"), input = $("image");
  input.addEventListener("change", () => setImage(input.files[0] || null));
  $("image-clear").addEventListener("click", () => { input.value = ""; setImage(null); input.focus(); });
  $("image-thumb").addEventListener("error", () => { $("image-thumb").hidden = true; }); // not an image
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]);
  });
}

function setImage(file) {
  $("image-thumb").hidden = false;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = file;
  state.imageUrl = file ? URL.createObjectURL(file) : null;
  $("error-image_url").textContent = "";
  $("image-preview").hidden = !file;
  $("image-thumb").src = state.imageUrl || "";
  $("image-name").textContent = file ? `${file.name} (${formatBytes(file.size)})` : "";
  $("image-status").textContent = file ? "image-to-video: the video starts from this image" : "";
}

// ---- live updates ----------------------------------------------------------------------------------
// One answer of /v1/studio/changes draws the page and says where the event stream resumes (`event_id`); from
// then on every change arrives as an event. While the stream is down the page polls as before.

function refresh() { if (!state.streaming) pollNow(); } // the stream brings what changed by itself

function pollNow() {
  clearTimeout(state.timer);
  if (!state.polling) poll();
}

async function poll() {
  state.polling = true;
  let more = false;
  try {
    const after = state.after === null ? "" : `&after=${state.after}`;
    const response = await fetch(`/v1/studio/changes?since=${state.cursor}${after}`);
    if (!response.ok) throw new Error(await errorMessage(response));
    const data = await readJson(response);
    applyJobs(data.jobs);
    applyQueue(data);
    state.cursor = data.cursor;
    state.after = data.after === undefined ? null : data.after;
    if (!data.more) state.eventId = data.event_id;
    more = Boolean(data.more);
    showConnection("");
  } catch (err) {
    showConnection(`lost touch with the stub (${err.message}); retrying`);
  } finally {
    state.polling = false;
    clearTimeout(state.timer);
    if (!more && !state.stream && state.retry === null) openStream();
    // More changed than one answer holds (each is size-limited): the rest at once, not a second later.
    if (!state.streaming) state.timer = setTimeout(poll, more ? 0 : document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
}

function openStream() {
  if (state.eventId === null || state.eventId === undefined || typeof EventSource === "undefined") return;
  // A first connection cannot send Last-Event-ID: the query says where to resume. On its own reconnects the
  // browser sends the header with the last id it got, which the stub takes over the query.
  const stream = new EventSource(`/v1/events?last_event_id=${state.eventId}`);
  state.stream = stream;
  stream.onopen = () => {
    state.streaming = true;
    clearTimeout(state.timer);
    showConnection("");
  };
  stream.onerror = () => {
    // Down: poll meanwhile. The browser reconnects by itself unless the stub refused the stream (closed): then
    // the page tries a new one later, from where its polls got to.
    state.streaming = false;
    if (stream.readyState === EventSource.CLOSED) {
      stream.close();
      if (state.stream === stream) state.stream = null;
      clearTimeout(state.retry);
      state.retry = setTimeout(() => { state.retry = null; if (!state.stream) openStream(); }, STREAM_RETRY_MS);
    }
    if (!state.polling) pollNow();
  };
  for (const type of JOB_EVENTS) {
    stream.addEventListener(type, (event) => {
      state.eventId = event.lastEventId;
      applyEvent(parseJson(event.data));
    });
  }
  stream.addEventListener("queue", (event) => applyQueue(parseJson(event.data)));
}

function applyEvent(event) {
  const { id, type, ...fields } = event;
  const view = state.views.get(event.job_id);
  if (!view) {
    // A job's first event draws it; any other event of a job the page has not drawn (one older than its first
    // answer held) fetches the job once.
    if (fields.input) applyJobs([fields]);
    else fetchJob(event.job_id);
    return;
  }
  if (view.updated_at && fields.updated_at < view.updated_at) return; // older than what the page shows
  applyJobs([Object.assign(view, fields)]);
}

async function fetchJob(jobId) {
  if (state.fetching.has(jobId)) return;
  state.fetching.add(jobId);
  try {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}`);
    if (response.ok) applyJobs([await readJson(response)]);
  } finally {
    state.fetching.delete(jobId);
  }
}

function showConnection(text) {
  const el = $("connection");
  el.textContent = text;
  el.hidden = !text;
}

function applyJobs(jobs) {
  const fresh = jobs.filter((job) => !state.jobs.has(job.job_id));
  for (const job of jobs) {
    const known = state.views.get(job.job_id);
    if (known && known !== job && known.updated_at && job.updated_at < known.updated_at) continue; // stale answer
    state.views.set(job.job_id, job);
    if (state.jobs.has(job.job_id)) updateJob(job);
  }
  fresh.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  const list = $("jobs");
  for (const job of fresh) insertJob(list, job);
  $("no-jobs").hidden = state.jobs.size > 0;
  if (state.counts) renderNote();
}

function applyQueue(data) {
  state.counts = data.counts;
  renderNote();
  renderCounts(data.counts);
  renderWorkers(data.workers);
}

function renderNote() {
  // The first answer holds the latest changes only (500): say so when the stub has more.
  const total = Object.values(state.counts).reduce((a, b) => a + b, 0);
  $("jobs-note").textContent = total > state.jobs.size ? `(the latest ${state.jobs.size} of ${total})` : "";
}

function insertJob(list, job) {
  const el = $("job-template").content.firstElementChild.cloneNode(true);
  el.id = `job-${job.job_id}`;
  el.dataset.id = job.job_id;
  el.dataset.created = job.created_at;
  state.jobs.set(job.job_id, el);
  // A new job goes first; on the first load they come newest first, so each goes last: both O(1).
  let before = list.firstElementChild;
  if (list.lastElementChild && list.lastElementChild.dataset.created > job.created_at) before = null;
  while (before && before.dataset.created > job.created_at) before = before.nextElementSibling;
  list.insertBefore(el, before);
  updateJob(job);
}

function updateJob(job) {
  const el = state.jobs.get(job.job_id);
  const key = `${job.updated_at}|${job.cancel_requested}`;
  if (el.dataset.key === key) return; // sent again (the cursor overlaps); nothing new
  el.dataset.key = key;
  el.dataset.status = job.status;
  const input = job.input || {};
  const cancelled = job.status === "failed" && job.error && job.error.code === "cancelled";
  const label = cancelled ? "cancelled" : job.cancel_requested && ACTIVE.has(job.status) ? "cancelling" : job.status;
  const badge = el.querySelector(".status");
  badge.textContent = label;
  badge.className = `badge status status-${label}`;
  el.querySelector(".mode").textContent = input.image_url ? "image → video" : "text → video";
  el.querySelector(".prompt").textContent = input.prompt || "";

  const percent = Math.round((job.progress || 0) * 100);
  const bar = el.querySelector("progress");
  bar.value = percent;
  bar.setAttribute("aria-label", `progress of job ${job.job_id.slice(0, 8)}`);
  bar.setAttribute("aria-valuetext", `${percent}% ${stageText(job)}`);
  el.querySelector(".progress-text").textContent = `${percent}% ${stageText(job)}`;

  const meta = [`${input.width}×${input.height}`, `${input.num_frames} frames @ ${input.fps} fps`,
    `attempt ${job.attempts}`, `queued ${timeOf(job.created_at)}`];
  if (job.worker_id && ACTIVE.has(job.status)) meta.push(`on ${job.worker_id}`);
  el.querySelector(".job-meta").textContent = meta.join(" · ");

  const error = el.querySelector(".job-error");
  error.hidden = !(job.status === "failed" && job.error);
  error.textContent = error.hidden ? "" : `${job.error.code}: ${job.error.message}`;
  const retry = el.querySelector(".job-retry");
  retry.hidden = !(ACTIVE.has(job.status) && job.last_error);
  retry.textContent = retry.hidden ? "" : `an earlier attempt failed, retrying: ${job.last_error.message}`;

  el.querySelector(".cancel").hidden = !(ACTIVE.has(job.status) && !job.cancel_requested);
  if (job.status === "completed" && job.result) showVideo(el, job);
}

function stageText(job) {
  if (job.status === "completed") return "done";
  if (job.status === "failed") return "stopped";
  if (job.status === "queued") return "waiting for a worker";
  const steps = job.step !== null && job.total_steps ? ` ${job.step}/${job.total_steps}` : "";
  return `${(job.stage || job.status).replace(/_/g, " ")}${steps}`;
}

function showVideo(el, job) {
  const box = el.querySelector(".job-video");
  if (!box.hidden) return;
  const result = job.result;
  // Made here, not in the template: a media element is costly, and most of a long list never plays.
  const video = document.createElement("video");
  Object.assign(video, { controls: true, playsInline: true, preload: "none" });
  box.prepend(video);
  // Always the stub's own route, never the result's URL: the stub serves the file, or redirects to the
  // configured storage only (a worker's report cannot point the page anywhere else).
  video.dataset.src = `/v1/jobs/${encodeURIComponent(job.job_id)}/video`;
  // The poster (v1.2 workers store one beside each video): the tile shows a frame before anything plays.
  if (result.poster_url) video.poster = `/v1/jobs/${encodeURIComponent(job.job_id)}/poster`;
  video.setAttribute("aria-label", `video of job ${job.job_id.slice(0, 8)}`);
  const link = box.querySelector(".download");
  link.href = `${video.dataset.src}?download=1`;
  link.setAttribute("download", `${job.job_id}.mp4`);
  const t = result.timings || {};
  // Numbers as numbers: an integer past 2^53 arrives as a BigInt (readJson), which arithmetic would reject.
  const frames = Number(result.num_frames), fps = Number(result.fps);
  box.querySelector(".video-facts").textContent = [
    `seed ${result.seed}`,
    `${result.width}×${result.height}`,
    `${frames} frames @ ${fps} fps (${(frames / fps).toFixed(1)} s)`,
    formatBytes(Number(result.bytes)),
    `generated in ${seconds(t.inference_s)}, encoded in ${seconds(t.encode_s)}, ${seconds(t.total_s)} in the worker`,
    `waited ${seconds(t.queue_s)}`,
  ].join(" · ");
  box.hidden = false;
  state.observer.observe(video);
}

function loadVisibleVideos(entries) {
  // Players load only when they scroll into view: a few hundred finished jobs do not fetch a few hundred videos.
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const video = entry.target;
    state.observer.unobserve(video);
    video.preload = "auto"; // a local file: load it whole, so play and seek start at once
    video.src = video.dataset.src;
  }
}

async function onJobClick(event) {
  const button = event.target.closest(".cancel");
  if (!button) return;
  const el = button.closest(".job");
  button.disabled = true;
  try {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(el.dataset.id)}/cancel`, { method: "POST" });
    if (!response.ok) {
      const error = el.querySelector(".job-error");
      error.textContent = await errorMessage(response);
      error.hidden = false;
    }
  } finally {
    button.disabled = false;
    refresh();
  }
}

function renderCounts(counts) {
  const parts = [["queued", "queued"], ["claimed", "claimed"], ["running", "running"], ["completed", "done"], ["failed", "failed"]];
  $("counts").textContent = parts.filter(([k]) => counts[k]).map(([k, label]) => `${counts[k]} ${label}`).join(" · ")
    || "no jobs yet";
}

function renderWorkers(workers) {
  const key = JSON.stringify(workers.map((w) => [w, w.job_id && state.jobs.get(w.job_id)?.dataset.status]));
  if (key === state.workers) return;
  state.workers = key;
  const list = $("workers");
  list.replaceChildren(...workers.map(workerItem));
  $("no-workers").hidden = workers.length > 0;
}

function workerItem(w) {
  const li = document.createElement("li");
  li.className = `worker${w.quiet ? " quiet" : ""}`;
  const head = document.createElement("div");
  head.className = "worker-head";
  const name = document.createElement("strong");
  name.textContent = w.worker_id;
  const badge = document.createElement("span");
  // Quarantined (its last attempts failed): the stub hands it no job until then; it comes back by itself.
  const label = w.quarantined_until ? "quarantined" : w.quiet ? "quiet" : w.state || "seen";
  badge.className = `badge worker-${label}`;
  badge.textContent = label;
  head.append(name, " ", badge);
  const gpu = w.gpu || {};
  const facts = [gpu.name || w.gpu_class || "unknown GPU"];
  if (gpu.memory_total_mb) facts.push(`${formatMb(gpu.memory_used_mb)} / ${formatMb(gpu.memory_total_mb)}`);
  facts.push(w.quiet ? `silent for ${Math.round(w.quiet_s)} s` : `heard ${Math.round(w.quiet_s)} s ago`);
  if (w.quarantined_until) facts.push(`no jobs until ${new Date(w.quarantined_until).toLocaleTimeString()}`);
  const detail = document.createElement("p");
  detail.className = "hint";
  detail.textContent = facts.join(" · ");
  li.append(head, detail);
  if (w.job_id) {
    const job = document.createElement("p");
    job.className = "hint";
    const link = document.createElement("a");
    link.href = `#job-${w.job_id}`;
    link.textContent = `job ${w.job_id.slice(0, 8)}`;
    // The worker's last heartbeat may predate the job's end (it beats every few seconds): trust the job.
    const card = state.jobs.get(w.job_id);
    const over = card && !ACTIVE.has(card.dataset.status);
    const stage = !over && w.stage ? ` ${w.stage.replace(/_/g, " ")} ${Math.round((w.progress || 0) * 100)}%` : "";
    job.append(over ? "finished " : "running ", link, stage);
    li.append(job);
  }
  return li;
}

// ---- formatting ------------------------------------------------------------------------------------

function formatBytes(n) {
  if (n >= 1048576) return `${(n / 1048576).toFixed(1)} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} kB`;
  return `${n} bytes`;
}
function formatMb(mb) { return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${mb} MB`; }
function seconds(s) { return s === undefined || s === null ? "?" : `${Number(s).toFixed(1)} s`; }
const TIME_FORMAT = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" }); // one formatter: building one is slow
function timeOf(iso) { return iso ? TIME_FORMAT.format(new Date(iso)) : ""; }
