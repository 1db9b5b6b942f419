// APIS operations page: one view of the cluster pushed by the server (server-sent events),
// drawn into unit boxes, deal flows, charts and tables; actions go to the JSON API with the
// control token. No build step, no framework.
"use strict";

const MODE_LABELS = { autonomous: "Run", heteronomous: "Soft Stop", stop: "Force Stop",
  manual: "Manual" };
const CONVERTER_LABELS = { "0x0000": "WAIT", "0x0014": "CV", "0x0041": "CC charge",
  "0x0002": "CC discharge" };
const CHART_POINTS = 600;

const $ = (sel) => document.querySelector(sel);
const state = {
  view: null, pending: null, selected: null, boxes: new Map(), flows: new Map(),
  historyCount: -1, charts: { rsoc: null, vg: null }, chartIds: "", series: null,
  lastChartX: null,
};
// Render statistics, read by the browser tests.
window.apisRender = { count: 0, lastMs: 0, maxMs: 0, totalMs: 0, seq: -1 };

// ---- token ----------------------------------------------------------------------------

function token() { return sessionStorage.getItem("apisToken") || ""; }
function setToken(value) {
  if (value) sessionStorage.setItem("apisToken", value); else sessionStorage.removeItem("apisToken");
  $("#token").value = value;
  checkToken();
}
async function checkToken() {
  const el = $("#token-state");
  if (!token()) { el.textContent = "read only"; return; }
  try {
    const r = await fetch("/api/auth", { headers: authHeaders() });
    el.textContent = r.ok ? "controls enabled" : (r.status === 403 ? "wrong token" : "?");
  } catch (e) { el.textContent = "?"; }
}
function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}
// A one-time login link (`#login=CODE`, printed at start-up): the code leaves the address at
// once and is traded for the token, which this tab keeps; the token itself is never printed.
const loginCode = (function takeLoginFromAddress() {
  const m = location.hash.match(/login=([^&]+)/);
  if (!m) return null;
  history.replaceState(null, "", location.pathname + location.search);
  return decodeURIComponent(m[1]);
})();
async function login(code) {
  try {
    const r = await fetch("/api/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code }),
    });
    const data = await r.json().catch(() => ({}));
    if (r.ok && data.token) { setToken(data.token); return; }
    checkToken();
    if (!token()) $("#token-state").textContent = "login link used or expired: enter the token";
  } catch (e) { checkToken(); }
}

// ---- actions --------------------------------------------------------------------------

function confirmAction(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function send(method, path, body, what) {
  const out = $("#action-result");
  if (!token()) { out.textContent = "enter the control token first"; return null; }
  out.textContent = what + "…";
  try {
    const r = await fetch(path, {
      method, headers: { "Content-Type": "application/json", ...authHeaders() },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      out.textContent = `${what}: refused (${r.status}) ${data.detail ? JSON.stringify(data.detail) : ""}`;
      return null;
    }
    out.textContent = `${what}: done`;
    return data;
  } catch (e) {
    out.textContent = `${what}: failed (${e})`;
    return null;
  }
}

async function setGlobal(mode) {
  const label = MODE_LABELS[mode];
  if (!(await confirmAction(`Set the global mode of the whole cluster to ${label} (${mode})?`))) return;
  await send("PUT", "/api/operation-mode", { mode }, `global ${label}`);
}

async function setLocal(mode) {
  const unit = state.selected;
  if (!unit) return;
  const label = mode ? MODE_LABELS[mode] : "follow global";
  if (!(await confirmAction(`Set the local mode of ${unit} to ${label}?`))) return;
  await send("PUT", `/api/units/${encodeURIComponent(unit)}/operation-mode`,
    { mode: mode || null }, `${unit} local ${label}`);
}

async function manualSet(ev) {
  ev.preventDefault();
  const unit = state.selected;
  const form = ev.target;
  const kind = form.elements.mode.value;
  const current = parseFloat(form.elements.current.value);
  const voltage = parseFloat(form.elements.voltage.value);
  let body;
  if (kind === "WAIT") body = { mode: "WAIT" };
  else if (kind === "VOLTAGE_REFERENCE") {
    body = { mode: "VOLTAGE_REFERENCE", gridVoltageV: voltage, gridCurrentA: Math.abs(current) };
  } else if (current >= 0) body = { mode: "CHARGE", gridVoltageV: voltage, gridCurrentA: current };
  else body = { mode: "DISCHARGE", gridVoltageV: voltage + 20, gridCurrentA: -current };
  if (!(await confirmAction(`Send ${body.mode} to the converter of ${unit}?`))) return;
  await send("POST", `/api/units/${encodeURIComponent(unit)}/dcdc`, body, `${unit} ${body.mode}`);
}

async function schedule(unit, inputId) {
  const value = $(inputId).value;
  const where = unit ? `unit ${unit}` : "the whole cluster";
  if (!value) { $("#action-result").textContent = "choose a date and time first"; return; }
  const at = new Date(value);
  if (!(await confirmAction(`Schedule a Soft Stop of ${where} at ${at.toLocaleString()}?`))) return;
  await send("PUT", "/api/schedules", { unitId: unit, softStopAt: at.toISOString() },
    `Soft Stop schedule for ${where}`);
}

async function clearSchedule(unit) {
  const where = unit ? `unit ${unit}` : "the whole cluster";
  if (!(await confirmAction(`Clear the scheduled Soft Stop of ${where}?`))) return;
  const query = unit ? `?unitId=${encodeURIComponent(unit)}` : "";
  await send("DELETE", `/api/schedules${query}`, undefined, `clear schedule of ${where}`);
}

function scheduleText(view, scope) {
  const s = (view.schedules || []).find((x) => x.scope === scope);
  return s ? `scheduled ${new Date(s.at * 1000).toLocaleString()} by ${s.by}` : "none scheduled";
}

async function stopAll() {
  if (!(await confirmAction("Stop all: Force Stop the cluster (or WAIT every converter)?"))) return;
  await send("POST", "/api/stop-all", undefined, "Stop all");
}

// ---- rendering ------------------------------------------------------------------------

function fmt(value, digits, unit) {
  return value === null || value === undefined ? "--" : value.toFixed(digits) + (unit || "");
}
function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
function setAttr(el, name, value) {
  if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

function newBox(id) {
  const box = document.createElement("div");
  box.className = "unit";
  box.dataset.unit = id;
  box.innerHTML = `<div class="head"><span class="name"></span><span class="marks">
    <span class="vr-mark" title="voltage reference (CV)" hidden>♛</span>
    <span class="gm-mark" title="Grid Master" hidden>GM</span></span></div>
    <div class="body"><div class="gauge"><div class="fill"></div></div>
    <div class="vals"><div class="rsoc"></div><div class="mode"></div>
    <div class="meter"></div><div class="eff"></div></div></div>`;
  box.addEventListener("click", () => select(id));
  const parts = {
    box, name: box.querySelector(".name"), vr: box.querySelector(".vr-mark"),
    gm: box.querySelector(".gm-mark"), fill: box.querySelector(".fill"),
    rsoc: box.querySelector(".rsoc"), mode: box.querySelector(".mode"),
    meter: box.querySelector(".meter"), eff: box.querySelector(".eff"),
  };
  return parts;
}

function renderUnits(view) {
  const container = $("#units");
  const seen = new Set();
  view.units.forEach((u, index) => {
    let parts = state.boxes.get(u.id);
    if (!parts) {
      parts = newBox(u.id);
      state.boxes.set(u.id, parts);
    }
    if (container.children[index] !== parts.box) container.insertBefore(parts.box, container.children[index] || null);
    seen.add(u.id);
    setText(parts.name, u.name === u.id ? u.id : `${u.id} ${u.name}`);
    setAttr(parts.box, "data-mode", u.mode);
    setAttr(parts.box, "data-effective", u.effective || "");
    parts.box.classList.toggle("grid-master", u.isGridMaster || view.gridMaster === u.id);
    parts.box.classList.toggle("selected", state.selected === u.id);
    parts.box.classList.remove("missing");
    parts.vr.hidden = !u.isVoltageReference;
    parts.gm.hidden = !(u.isGridMaster || view.gridMaster === u.id);
    const rsoc = u.rsoc === null ? 0 : Math.max(0, Math.min(100, u.rsoc));
    parts.fill.style.height = rsoc.toFixed(1) + "%";
    setText(parts.rsoc, u.rsoc === null ? "--" : Math.round(u.rsoc) + "%");
    setText(parts.mode, CONVERTER_LABELS[u.mode] || u.mode || "?");
    setText(parts.meter, `${fmt(u.vg, 1, " V")} ${u.ig !== null && u.ig >= 0 ? "+" : ""}${fmt(u.ig, 2, " A")}`);
    const eff = u.effective || "--";
    setText(parts.eff, (MODE_LABELS[eff] || eff) + (u.local ? " (local)" : ""));
    parts.eff.className = "eff " + eff;
  });
  for (const id of view.missingUnits || []) {
    let parts = state.boxes.get(id);
    if (!parts) { parts = newBox(id); state.boxes.set(id, parts); container.appendChild(parts.box); }
    seen.add(id);
    parts.box.classList.add("missing");
    setText(parts.meter, "no data");
  }
  for (const [id, parts] of state.boxes) {
    if (!seen.has(id)) { parts.box.remove(); state.boxes.delete(id); }
  }
  setText($("#unit-count"), `${view.units.length} units, ${view.deals.length} deals`);
}

function renderFlows(view) {
  const svg = $("#flows");
  const positions = new Map();
  for (const [id, parts] of state.boxes) {
    const b = parts.box;
    positions.set(id, { x: b.offsetLeft + b.offsetWidth / 2, y: b.offsetTop + b.offsetHeight / 2 });
  }
  const seen = new Set();
  const pairs = new Map();  // deals between the same two units are drawn side by side
  for (const d of view.deals) {
    const key = [d.dischargeUnitId, d.chargeUnitId].sort().join("|");
    pairs.set(key, (pairs.get(key) || 0) + 1);
  }
  const drawn = new Map();
  for (const d of view.deals) {
    const a = positions.get(d.dischargeUnitId), b = positions.get(d.chargeUnitId);
    if (!a || !b) continue;
    const key = [d.dischargeUnitId, d.chargeUnitId].sort().join("|");
    const k = drawn.get(key) || 0;
    drawn.set(key, k + 1);
    const shift = (k - (pairs.get(key) - 1) / 2) * 14;
    const ux = b.x - a.x, uy = b.y - a.y, ul = Math.hypot(ux, uy) || 1;
    const px = -uy / ul * shift, py = ux / ul * shift;
    const from = { x: a.x + px, y: a.y + py }, to = { x: b.x + px, y: b.y + py };
    seen.add(d.dealId);
    let g = state.flows.get(d.dealId);
    if (!g) {
      g = document.createElementNS("http://www.w3.org/2000/svg", "g");
      g.innerHTML = '<line marker-end="url(#arrow)"></line><text text-anchor="middle"></text>';
      g.setAttribute("class", "flow");
      g.dataset.deal = d.dealId;
      g.dataset.from = d.dischargeUnitId;
      g.dataset.to = d.chargeUnitId;
      svg.appendChild(g);
      state.flows.set(d.dealId, g);
    }
    g.classList.toggle("master", d.isMaster);
    g.dataset.state = d.state;
    // Stop the arrow short of the charger's centre so its head stays visible.
    const dx = to.x - from.x, dy = to.y - from.y, len = Math.hypot(dx, dy) || 1;
    const shorten = Math.min(40, len / 3);
    const line = g.firstChild, text = g.lastChild;
    line.setAttribute("x1", from.x); line.setAttribute("y1", from.y);
    line.setAttribute("x2", to.x - dx / len * shorten); line.setAttribute("y2", to.y - dy / len * shorten);
    text.setAttribute("x", (from.x + to.x) / 2); text.setAttribute("y", (from.y + to.y) / 2 - 4);
    setText(text, `${fmt(d.gridCurrentA, 1, " A")} · ${Math.round(d.progress * 100)}% of ${d.amountWh} Wh`);
  }
  for (const [id, g] of state.flows) {
    if (!seen.has(id)) { g.remove(); state.flows.delete(id); }
  }
}

function renderModes(view) {
  const modes = view.modes;
  const el = $("#global-mode");
  setText(el, modes.global ? `${MODE_LABELS[modes.global] || modes.global} (${modes.global})` : "--");
  setAttr(el, "data-mode", modes.global || "");
  const when = modes.changedAt ? new Date(modes.changedAt * 1000).toLocaleString() : null;
  setText($("#global-changed"), when ? `changed by ${modes.changedBy} at ${when}` : "");
  for (const b of document.querySelectorAll(".mode-btn")) {
    b.classList.toggle("current", b.dataset.mode === modes.global);
  }
  setText($("#sched-global-state"), scheduleText(view, "global"));
}

function renderLink(view) {
  const el = $("#link");
  const s = view.snapshot;
  const age = s.ageS === null ? null : s.ageS;
  let cls = "ok", text = "live";
  if (!s.ok) { cls = "stale"; text = `Grid Master not answering (${s.error || "?"})`; }
  if (age !== null && age > 10) { cls = "stale"; text += `, data ${Math.round(age)} s old`; }
  if (age === null) { cls = "down"; text = "no data yet"; }
  el.className = "link " + cls;
  setText(el, text);
  const t = view.clusterTimestamp;
  setText($("#cluster-time"), t ? new Date(t * 1000).toLocaleString() : "--");
}

function renderDeals(view) {
  const rows = view.deals.map((d) => `<tr data-deal="${esc(d.dealId)}"><td>${esc(String(d.dealId).slice(0, 8))}${d.isMaster ? " ★" : ""}</td>
    <td>${esc(d.dischargeUnitId)} → ${esc(d.chargeUnitId)}</td><td class="num">${fmt(d.gridCurrentA, 1)}</td>
    <td class="num">${fmt(d.cumulateAmountWh, 1)} / ${d.amountWh}</td>
    <td><span class="bar"><i style="width:${(d.progress * 100).toFixed(0)}%"></i></span></td>
    <td>${esc(d.state)}</td></tr>`).join("");
  const body = $("#deals tbody");
  if (body.innerHTML !== rows) body.innerHTML = rows;
}

function renderErrors(view) {
  const html = view.errors.map((e) => `<li class="${esc(e.level)}">${new Date(e.at * 1000).toLocaleTimeString()}
    (${esc(e.category)}:${esc(e.extent)}:${esc(e.level)}:${esc(e.unitId)}) ${esc(e.message)}${e.source === "injected" ? " [injected]" : ""}</li>`).join("");
  const list = $("#errors");
  if (list.innerHTML !== html) list.innerHTML = html || "";
}

function renderGrid(view) {
  const note = $("#grid-note");
  const body = $("#grid tbody");
  const grid = view.grid;
  if (!grid.available) {
    setText(note, "not available (no emulator in this process)");
    body.innerHTML = "";
    return;
  }
  setText(note, `line loss ${fmt(grid.totalLineLossWh, 1, " Wh")}` +
    (grid.voltageConflicts ? `, ${grid.voltageConflicts} voltage conflicts!` : ""));
  const nodes = Object.entries(grid.nodeVoltages || {}).map(([id, v]) =>
    `<tr><td>${esc(id)}</td><td class="num">${fmt(v, 1, " V")}</td></tr>`);
  const lines = (grid.lines || []).map((l) =>
    `<tr><td>${esc(l.id)}</td><td class="num">${fmt(l.currentA, 2, " A")}</td></tr>`);
  const rows = nodes.join("") + lines.join("");
  if (body.innerHTML !== rows) body.innerHTML = rows;
}

async function renderHistory(view) {
  setText($("#history-summary"), `${view.history.count} finished, ${view.history.energyWh.toFixed(1)} Wh`);
  if (view.history.count === state.historyCount) return;
  state.historyCount = view.history.count;
  try {
    const r = await fetch("/api/deals/history?limit=50");
    const data = await r.json();
    $("#history tbody").innerHTML = data.deals.map((d) => `<tr><td>${esc(d.createDateTime || "")}</td>
      <td>${esc(d.dischargeUnitId)} → ${esc(d.chargeUnitId)}</td>
      <td class="num">${fmt(d.cumulateAmountWh || 0, 1)}</td><td class="num">${d.dealAmountWh}</td>
      <td>${esc(d.ended)}</td></tr>`).join("");
  } catch (e) { /* next change retries */ }
}

function renderDetail(view) {
  const aside = $("#detail");
  const u = view.units.find((x) => x.id === state.selected);
  if (!state.selected) { aside.hidden = true; return; }
  aside.hidden = false;
  setText($("#detail-id"), state.selected);
  if (!u) { $("#detail-values").innerHTML = "<dt>data</dt><dd>none</dd>"; return; }
  const rows = [
    ["name", u.name], ["RSOC", fmt(u.rsoc, 1, " %")], ["converter", `${CONVERTER_LABELS[u.mode] || u.mode} (${u.mode})`],
    ["grid", `${fmt(u.vg, 1, " V")}, ${fmt(u.ig, 2, " A")}, ${fmt(u.wg, 0, " W")}`],
    ["battery", fmt(u.wb, 0, " W")], ["set-points", `dvg ${fmt(u.dvg, 0, " V")}, dig ${fmt(u.dig, 2, " A")}`],
    ["global", u.global || "--"], ["local", u.local || "(follows global)"], ["effective", u.effective || "--"],
    ["Grid Master", u.isGridMaster ? "yes" : "no"], ["deals", u.dealIds.join(", ") || "none"], ["time", u.time || "--"],
  ];
  $("#detail-values").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd>${esc(String(v))}</dd>`).join("");
  setText($("#sched-local-state"), scheduleText(view, state.selected));
  const manual = u.effective === "manual";
  for (const el of $("#manual").elements) el.disabled = !manual;
  setText($("#manual-note"), manual ? "Manual: commands go to this converter." :
    `Disabled: effective mode is ${u.effective || "--"} (must be Manual).`);
  for (const b of document.querySelectorAll(".local-btn")) {
    b.classList.toggle("current", (b.dataset.mode || null) === (u.local || null));
  }
}

function select(id) {
  state.selected = state.selected === id ? null : id;
  if (state.view) render(state.view);
}

// ---- charts ---------------------------------------------------------------------------

function palette(i, n) { return `hsl(${Math.round(360 * i / Math.max(n, 1))} 70% 45%)`; }

function makeChart(target, ids, label, data) {
  const el = $(target);
  el.innerHTML = "";
  const width = Math.max(300, el.clientWidth || 500);
  return new uPlot({
    width, height: 220, legend: { show: ids.length <= 12 },
    scales: { x: { time: true } },
    series: [{}, ...ids.map((id, i) => ({ label: id, stroke: palette(i, ids.length), width: 1.5,
      points: { show: false } }))],
    axes: [{}, { label }],
  }, data, el);
}

function renderCharts(view) {
  if (typeof uPlot === "undefined") return;
  const x = view.clusterTimestamp;
  if (x === null || x === undefined) return;
  const ids = view.units.map((u) => u.id);
  const key = ids.join(",");
  if (key !== state.chartIds) {
    state.chartIds = key;
    state.series = { x: [], rsoc: ids.map(() => []), vg: ids.map(() => []) };
    state.lastChartX = null;
    state.charts.rsoc = makeChart("#chart-rsoc", ids, "%", [[], ...ids.map(() => [])]);
    state.charts.vg = makeChart("#chart-vg", ids, "V", [[], ...ids.map(() => [])]);
  }
  if (state.lastChartX !== null && x <= state.lastChartX) return;
  state.lastChartX = x;
  const s = state.series;
  s.x.push(x);
  view.units.forEach((u, i) => { s.rsoc[i].push(u.rsoc); s.vg[i].push(u.vg); });
  if (s.x.length > CHART_POINTS) {
    s.x.shift(); s.rsoc.forEach((a) => a.shift()); s.vg.forEach((a) => a.shift());
  }
  state.charts.rsoc.setData([s.x, ...s.rsoc]);
  state.charts.vg.setData([s.x, ...s.vg]);
}

// ---- the loop -------------------------------------------------------------------------

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;" }[c]));
}

function render(view) {
  const t0 = performance.now();
  renderLink(view);
  renderModes(view);
  renderUnits(view);
  renderFlows(view);
  renderDeals(view);
  renderErrors(view);
  renderGrid(view);
  renderDetail(view);
  renderCharts(view);
  const ms = performance.now() - t0;
  const stats = window.apisRender;
  stats.count += 1; stats.lastMs = ms; stats.totalMs += ms; stats.maxMs = Math.max(stats.maxMs, ms);
  stats.seq = view.seq;
  renderHistory(view);
}

function receive(view) {
  state.view = view;
  if (state.pending) return;  // one render per animation frame, with the newest view
  state.pending = requestAnimationFrame(() => { state.pending = null; render(state.view); });
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("cluster", (ev) => receive(JSON.parse(ev.data)));
  source.onerror = () => {
    const el = $("#link");
    el.className = "link down";
    el.textContent = "disconnected from the server; retrying…";
  };
}

window.addEventListener("DOMContentLoaded", () => {
  $("#token").value = token();
  $("#token").addEventListener("change", (ev) => setToken(ev.target.value.trim()));
  $("#stop-all").addEventListener("click", stopAll);
  for (const b of document.querySelectorAll(".mode-btn")) {
    b.addEventListener("click", () => setGlobal(b.dataset.mode));
  }
  for (const b of document.querySelectorAll(".local-btn")) {
    b.addEventListener("click", () => setLocal(b.dataset.mode));
  }
  $("#detail-close").addEventListener("click", () => select(state.selected));
  $("#manual").addEventListener("submit", manualSet);
  $("#sched-global-set").addEventListener("click", () => schedule(null, "#sched-global-at"));
  $("#sched-global-clear").addEventListener("click", () => clearSchedule(null));
  $("#sched-local-set").addEventListener("click", () => schedule(state.selected, "#sched-local-at"));
  $("#sched-local-clear").addEventListener("click", () => clearSchedule(state.selected));
  if (loginCode) login(loginCode); else checkToken();
  connect();
});
