// jobd's console: reads the HTTP API with the operator's token and renders everything as
// text (textContent, never markup), so that a payload or an error holding markup shows
// as written and cannot run.
"use strict";

const TOKEN_KEY = "jobd-token";
const POLL_MS = 2000;
// The chart keeps five minutes: one point every two seconds.
const CHART_POINTS = 150;
const STATES = ["queued", "scheduled", "running", "failed", "dead"];

const $ = (id) => document.getElementById(id);
let scopes = [];
// Counter readings, {t, submitted, finished}, from which the chart draws rates.
let samples = [];
let pollTimer = null;
let nextCursor = null;
// The filter of the listing shown, which a bulk retry applies to (not the form's edits).
let listedFilter = new URLSearchParams();
let currentJob = null;
// Each navigation's number: an older navigation that finishes late draws nothing.
let routeNumber = 0;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// Sends a request to the API, with `json` as its body if given; resolves to
// {ok, status, body} and never throws.
async function api(method, path, json) {
  const headers = { accept: "application/json" };
  const bearer = token();
  if (bearer) headers.authorization = "Bearer " + bearer;
  const init = { method, headers, cache: "no-store" };
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  try {
    const response = await fetch(path, init);
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = { detail: text }; }
    return { ok: response.ok, status: response.status, body };
  } catch (error) {
    return { ok: false, status: 0, body: { detail: String(error) } };
  }
}

function problemText(answer) {
  const body = answer.body || {};
  let text = (body.detail || body.title || "request failed") + " (" + answer.status + ")";
  for (const error of body.errors || []) text += "; " + error.field + ": " + error.message;
  return text;
}

function say(text, isError) {
  const message = $("message");
  message.textContent = text || "";
  message.className = isError ? "error" : "";
}

function may(scope) {
  return scopes.includes(scope);
}

function show(sectionId) {
  for (const id of ["login", "overview", "jobs", "job", "queues"]) $(id).hidden = id !== sectionId;
  for (const link of document.querySelectorAll("nav a")) link.classList.remove("current");
  const nav = { overview: "nav-overview", jobs: "nav-jobs", queues: "nav-queues" }[sectionId];
  if (nav) $(nav).classList.add("current");
}

// ---- sign in ----

async function signIn() {
  const answer = await api("GET", "/v1/whoami");
  if (answer.ok) {
    scopes = answer.body.scopes || [];
    const name = answer.body.authenticated ? answer.body.name + " (" + scopes.join(", ") + ")" : "no tokens in force";
    $("who-name").textContent = name;
    $("sign-out").hidden = !answer.body.authenticated;
    offerKinds(answer.body.kinds || []);
    return true;
  }
  show("login");
  $("login-error").textContent =
    answer.status === 401 ? (token() ? "That token is not known." : "") :
    answer.status === 403 ? "That token may not read jobs (it needs the read scope)." : problemText(answer);
  if (answer.status === 401 && token()) sessionStorage.removeItem(TOKEN_KEY);
  return false;
}

// The kind filter offers the kinds this jobd runs.
function offerKinds(kinds) {
  const select = $("filter-kind");
  if (select.options.length > 1) return;
  for (const kind of kinds) {
    const option = document.createElement("option");
    option.textContent = kind;
    select.appendChild(option);
  }
}

// ---- overview ----

// A count with thousands separated (1,234,567), whatever the browser's locale.
function separated(value) {
  return typeof value === "number" ? value.toLocaleString("en-US") : String(value);
}

function setFigure(id, value) {
  $(id).textContent = value === undefined || value === null ? "-" : separated(value);
}

// A point of the chart from a sample of the server's history or a reading of /v1/stats.
function chartPoint(t, jobs) {
  return { t, submitted: jobs.accepted, finished: jobs.succeeded + jobs.dead };
}

// The webhook destinations and their circuits, from /readyz (an operator's token sees them).
function showDestinations(readiness) {
  const destinations = ((readiness.kinds || {}).webhook || {}).destinations || {};
  const names = Object.keys(destinations).sort();
  $("destinations-section").hidden = names.length === 0;
  const body = $("destinations-table").querySelector("tbody");
  body.replaceChildren();
  for (const name of names) {
    const destination = destinations[name];
    const row = document.createElement("tr");
    cell(row, name);
    cell(row, destination.circuit, destination.circuit === "closed" ? "" : "error");
    cell(row, destination.in_flight + " of " + destination.max_in_flight);
    cell(row, destination.consecutive_failures);
    body.appendChild(row);
  }
}

async function refreshOverview() {
  // The first reading brings the server's last minutes, so that the chart and the rates
  // show at once rather than after the tab has been open a while.
  const seeding = samples.length === 0;
  const [stats, ready] =
    await Promise.all([api("GET", seeding ? "/v1/stats?history=true" : "/v1/stats"), api("GET", "/readyz")]);
  if (!stats.ok) {
    say("Stats unavailable: " + problemText(stats), true);
    return;
  }
  const queue = stats.body.queue;
  for (const state of STATES) setFigure("depth-" + state, queue[state]);
  setFigure("depth-capacity", queue.capacity);
  const counters = stats.body.counters;
  setFigure("workers-busy", counters.workers.busy);
  setFigure("workers-idle", counters.workers.idle);
  setFigure("bodies-running", counters.workers.bodies_running);
  setFigure("jobs-accepted", counters.jobs.accepted);
  setFigure("jobs-succeeded", counters.jobs.succeeded);
  setFigure("jobs-failed", counters.jobs.failed + counters.jobs.timed_out + counters.jobs.panicked);
  setFigure("jobs-dead", counters.jobs.dead);
  const nodes = stats.body.cluster ? stats.body.cluster.nodes : 1;
  $("nodes-card").hidden = !(nodes > 1);
  setFigure("nodes", nodes);
  const readiness = ready.body || {};
  setFigure("ready", readiness.ready ? "yes" : "no");
  setFigure("store", readiness.store && readiness.store.reachable ? "reachable" : "unreachable");
  showDestinations(readiness);
  if (seeding && Array.isArray(stats.body.history)) {
    // One sample a second on the server, one point every two seconds here.
    const history = stats.body.history;
    for (let i = history.length % 2; i < history.length; i += 2) {
      samples.push(chartPoint(history[i].at_ms, history[i]));
    }
    samples = samples.slice(-CHART_POINTS);
  }
  samples.push(chartPoint(Date.parse(stats.body.at) || Date.now(), counters.jobs));
  if (samples.length > CHART_POINTS + 1) samples.shift();
  drawChart();
}

// Rates between consecutive readings, drawn as two lines on one scale.
function drawChart() {
  const canvas = $("chart");
  const context = canvas.getContext("2d");
  const width = canvas.width;
  const height = canvas.height;
  context.clearRect(0, 0, width, height);
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const seconds = Math.max((samples[i].t - samples[i - 1].t) / 1000, 0.001);
    rates.push({
      submitted: Math.max(0, samples[i].submitted - samples[i - 1].submitted) / seconds,
      finished: Math.max(0, samples[i].finished - samples[i - 1].finished) / seconds,
    });
  }
  const last = rates[rates.length - 1];
  $("rate-submitted").textContent = last ? separated(Math.round(last.submitted)) : "-";
  $("rate-finished").textContent = last ? separated(Math.round(last.finished)) : "-";
  const top = Math.max(1, ...rates.map((rate) => Math.max(rate.submitted, rate.finished)));
  context.fillStyle = "#5d6b7e";
  context.font = "11px sans-serif";
  context.fillText(top.toFixed(0) + "/s", 4, 12);
  context.fillText("5 min ago", 4, height - 6);
  context.fillText("now", width - 24, height - 6);
  const step = width / CHART_POINTS;
  for (const [series, colour] of [["submitted", "#2457c5"], ["finished", "#1f8a4c"]]) {
    context.strokeStyle = colour;
    context.lineWidth = 2;
    context.beginPath();
    rates.forEach((rate, i) => {
      const x = width - (rates.length - 1 - i) * step;
      const y = height - 4 - (rate[series] / top) * (height - 20);
      if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
  }
}

// ---- jobs ----

function filterQuery() {
  const params = new URLSearchParams();
  const state = $("filter-state").value;
  const kind = $("filter-kind").value;
  if (state) params.set("state", state);
  if (kind) params.set("kind", kind);
  return params;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

// `2026-12-02T12:08:29.060Z` as `2026-12-02 12:08:29Z`: a listing needs the second, not the millisecond.
function shortTime(text) {
  return typeof text === "string" && text.length >= 19 ? text.slice(0, 10) + " " + text.slice(11, 19) + "Z" : text;
}

// Loads a page of the listing: a fresh listing (no cursor) takes the form's filter, an
// older page keeps the filter its cursor came from.
async function loadJobs(cursor) {
  if (!cursor) listedFilter = filterQuery();
  const params = new URLSearchParams(listedFilter);
  params.set("limit", "50");
  if (cursor) params.set("cursor", cursor);
  const answer = await api("GET", "/v1/jobs?" + params.toString());
  const body = $("jobs-table").querySelector("tbody");
  body.replaceChildren();
  if (!answer.ok) {
    say("Listing failed: " + problemText(answer), true);
    return;
  }
  for (const record of answer.body.jobs) {
    const row = document.createElement("tr");
    const idCell = document.createElement("td");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = record.id;
    open.addEventListener("click", () => { location.hash = "#/job/" + encodeURIComponent(record.id); });
    idCell.appendChild(open);
    row.appendChild(idCell);
    cell(row, record.kind);
    cell(row, record.state);
    cell(row, record.attempts + "/" + record.max_attempts);
    cell(row, shortTime(record.created_at), "nowrap");
    cell(row, record.submitted_by || "");
    cell(row, record.last_error, "error-cell");
    body.appendChild(row);
  }
  nextCursor = answer.body.next_cursor;
  $("next-page").disabled = !nextCursor;
  $("bulk-retry").disabled = !(may("admin") && listedFilter.get("state") === "dead");
  $("bulk-note").textContent = !may("admin") ? "Retrying needs a token with the admin scope." :
    listedFilter.get("state") === "dead" ? "" : "Show dead jobs to retry them all.";
}

async function bulkRetry() {
  const params = new URLSearchParams(listedFilter);
  params.set("dry_run", "true");
  const count = await api("POST", "/v1/jobs/retry?" + params.toString());
  if (!count.ok) {
    say("Cannot count the dead jobs: " + problemText(count), true);
    return;
  }
  if (count.body.matched === 0) {
    say("No dead job matches.");
    return;
  }
  const kind = listedFilter.get("kind");
  $("confirm-text").textContent = "Retry " + (count.body.more ? "the newest " : "") + count.body.matched +
    " dead job" + (count.body.matched === 1 ? "" : "s") + (kind ? " of kind " + kind : "") +
    (count.body.more ? " (more match: run it again for the rest)" : "") + "?";
  const dialog = $("confirm");
  dialog.returnValue = "";
  // Settled by the dialog closing, however it closes (a button, or Escape).
  const closed = new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  dialog.showModal();
  await closed;
  if (dialog.returnValue !== "ok") return;
  params.delete("dry_run");
  params.set("limit", String(count.body.matched));
  // Exactly the jobs counted: one that died since is not among them.
  const done = await api("POST", "/v1/jobs/retry?" + params.toString(), { ids: count.body.ids || [] });
  if (done.ok) {
    const left = done.body.matched - done.body.retried;
    say("Retried " + done.body.retried + " of " + done.body.matched + " dead jobs." +
      (left > 0 ? " " + left + " of those counted were no longer dead (retried or purged meanwhile)." : ""));
  } else {
    say("Bulk retry failed: " + problemText(done), true);
  }
  loadJobs(null);
}

// ---- one job ----

async function loadJob(id) {
  const answer = await api("GET", "/v1/jobs/" + encodeURIComponent(id));
  $("job-id").textContent = id;
  $("payload").textContent = "(not loaded)";
  const list = $("job-record");
  list.replaceChildren();
  if (!answer.ok) {
    currentJob = null;
    say("Cannot read the job: " + problemText(answer), true);
    $("retry-button").disabled = true;
    $("cancel-button").disabled = true;
    return;
  }
  currentJob = answer.body;
  for (const [name, value] of Object.entries(currentJob)) {
    if (name === "last_error") continue;
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = value === null ? "-" : typeof value === "object" ? JSON.stringify(value) : String(value);
    if (name === "state") detail.id = "job-state";
    list.append(term, detail);
  }
  $("last-error").textContent = currentJob.last_error || "(none)";
  const admin = may("admin");
  $("retry-button").disabled = !(admin && currentJob.state === "dead");
  $("cancel-button").disabled = !(admin && ["queued", "scheduled", "failed"].includes(currentJob.state));
  $("actions-note").textContent = !admin ? "Retry and cancel need a token with the admin scope." :
    "Only a dead job can be retried, and only a queued, scheduled or failed one cancelled.";
}

async function loadPayload() {
  if (!currentJob) return;
  const answer = await api("GET", "/v1/jobs/" + encodeURIComponent(currentJob.id) + "?payload=true");
  if (!answer.ok) {
    say("Cannot read the payload: " + problemText(answer), true);
    return;
  }
  const payload = answer.body.payload;
  $("payload").textContent = payload === undefined || payload === null ? "(no payload)" :
    typeof payload === "string" ? payload : JSON.stringify(payload, null, 2);
}

async function control(button, method, suffix, verb) {
  if (!currentJob) return;
  // Disabled while the request is out, so that a double click sends one.
  button.disabled = true;
  const path = "/v1/jobs/" + encodeURIComponent(currentJob.id) + suffix;
  const answer = await api(method, path);
  if (answer.ok) say(verb + " job " + currentJob.id + ".");
  else say(verb + " failed: " + problemText(answer), true);
  loadJob(currentJob.id);
}

// ---- queues ----

async function loadQueues() {
  const answer = await api("GET", "/v1/queues");
  if (!answer.ok) {
    say("Cannot list the queues: " + problemText(answer), true);
    return;
  }
  const admin = may("admin");
  $("queues-note").textContent = admin
    ? "Pause stops new starts of a queue on every node; running jobs finish. The pause outlives restarts."
    : "Pausing and resuming needs a token with the admin scope.";
  const body = $("queues-table").tBodies[0];
  body.replaceChildren();
  for (const queue of answer.body.queues || []) {
    const row = body.insertRow();
    row.dataset.queue = queue.name;
    cell(row, queue.name + (queue.declared ? "" : " (not declared here)"));
    cell(row, queue.paused ? "paused" : "running", queue.paused ? "error" : "");
    for (const state of ["queued", "scheduled", "running", "failed"]) {
      cell(row, separated((queue.depth || {})[state] || 0), "figure-cell");
    }
    cell(row, queue.concurrency === undefined ? "-" : String(queue.concurrency), "figure-cell");
    const actions = row.insertCell();
    if (queue.declared) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = queue.paused ? "Resume" : "Pause";
      button.disabled = !admin;
      button.addEventListener("click", () => pauseQueue(button, queue.name, !queue.paused));
      actions.append(button);
    }
  }
}

async function pauseQueue(button, name, pause) {
  // Disabled while the request is out, so that a double click sends one.
  button.disabled = true;
  const verb = pause ? "pause" : "resume";
  const answer = await api("POST", "/v1/queues/" + encodeURIComponent(name) + "/" + verb);
  if (answer.ok) say((pause ? "Paused" : "Resumed") + " queue " + name + ".");
  else say("Could not " + verb + " queue " + name + ": " + problemText(answer), true);
  await loadQueues();
}

// ---- routing ----

function decoded(text) {
  try { return decodeURIComponent(text); } catch (_) { return text; }
}

async function route() {
  clearInterval(pollTimer);
  pollTimer = null;
  const number = ++routeNumber;
  const signedIn = await signIn();
  if (!signedIn || number !== routeNumber) return;
  const hash = location.hash || "#/overview";
  if (hash.startsWith("#/job/")) {
    show("job");
    await loadJob(decoded(hash.slice("#/job/".length)));
  } else if (hash.startsWith("#/queues")) {
    show("queues");
    await loadQueues();
    pollTimer = setInterval(loadQueues, POLL_MS);
  } else if (hash.startsWith("#/jobs")) {
    show("jobs");
    const params = new URLSearchParams(hash.split("?")[1] || "");
    $("filter-state").value = params.get("state") || "";
    $("filter-kind").value = params.get("kind") || "";
    await loadJobs(null);
  } else {
    show("overview");
    await refreshOverview();
    pollTimer = setInterval(refreshOverview, POLL_MS);
  }
}

function start() {
  const login = () => {
    const value = $("login-token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("login-token").value = "";
    route();
  };
  $("login-button").addEventListener("click", login);
  $("login-token").addEventListener("keydown", (event) => { if (event.key === "Enter") login(); });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    scopes = [];
    $("who-name").textContent = "";
    $("sign-out").hidden = true;
    route();
  });
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const params = filterQuery().toString();
    const target = "#/jobs" + (params ? "?" + params : "");
    if (location.hash === target) loadJobs(null); else location.hash = target;
  });
  $("next-page").addEventListener("click", () => { if (nextCursor) loadJobs(nextCursor); });
  $("first-page").addEventListener("click", () => loadJobs(null));
  $("goto-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("goto-id").value.trim();
    if (id) location.hash = "#/job/" + encodeURIComponent(id);
    $("goto-id").value = "";
  });
  $("bulk-retry").addEventListener("click", bulkRetry);
  $("payload-button").addEventListener("click", loadPayload);
  $("retry-button").addEventListener("click", (event) => control(event.currentTarget, "POST", "/retry", "Retried"));
  $("cancel-button").addEventListener("click", (event) => control(event.currentTarget, "DELETE", "", "Cancelled"));
  $("confirm-ok").addEventListener("click", () => $("confirm").close("ok"));
  $("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));
  window.addEventListener("hashchange", () => { say(""); route(); });
  route();
}

document.addEventListener("DOMContentLoaded", start);
