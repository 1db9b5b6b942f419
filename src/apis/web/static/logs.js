// The log viewer: action log lines from the records store, filtered by unit, level and
// text, newest first; "live tail" polls for lines stored since (a minute of overlap,
// de-duplicated, so that lines a unit sent a little late still appear).
"use strict";

const PAGE = 200;
const KEEP = 2000;  // rows kept in the table
const TAIL_MS = 2000;
const TAIL_OVERLAP_S = 60;
const LEVEL_CLASS = { SEVERE: "bad", WARNING: "warn" };

const $ = (sel) => document.querySelector(sel);
const view = { rows: [], keys: new Set(), offset: 0, generation: 0, timer: null, newestAt: null,
  fromEpoch: null };
// For the browser tests: how many times the table was drawn and with how many rows.
window.apisLogs = { draws: 0, rows: 0, polls: 0, error: null };

function filters() {
  return {
    unit: $("#unit").value, level: $("#level").value, text: $("#text").value.trim(),
    from: $("#from").value, to: $("#to").value,  // no offset: the records' zone
  };
}

function key(row) { return `${row.origin}#${row.seq}`; }

function render() {
  const body = $("#lines tbody");
  body.innerHTML = view.rows.map((r) => `<tr data-unit="${records.esc(r.unitId)}" data-level="${records.esc(r.level)}" class="${LEVEL_CLASS[r.level] || ""}">
    <td class="time">${records.time(r.at)}</td><td>${records.esc(r.unitId)}</td>
    <td>${records.esc(r.level)}</td><td class="muted">${records.esc(r.logger || "")}</td>
    <td class="message">${records.esc(r.message)}</td></tr>`).join("");
  window.apisLogs.draws += 1;
  window.apisLogs.rows = view.rows.length;
  const f = filters();
  $("#csv").href = "/api/records/logs" + records.query({ ...f, format: "csv", limit: 10000 });
}

function setState(text) { $("#state").textContent = text; }

async function reload() {
  const generation = ++view.generation;
  view.rows = []; view.keys = new Set(); view.offset = 0; view.newestAt = null;
  view.fromEpoch = null;
  await more(generation);
}

async function more(generation = view.generation) {
  try {
    const page = await records.get("logs", { ...filters(), limit: PAGE, offset: view.offset });
    if (generation !== view.generation) return;  // the filters changed meanwhile
    view.fromEpoch = page.from;  // the server's reading of From
    for (const row of page.rows) {
      if (view.keys.has(key(row))) continue;
      view.keys.add(key(row));
      view.rows.push(row);
      if (view.newestAt === null || row.at > view.newestAt) view.newestAt = row.at;
    }
    view.offset += page.rows.length;
    $("#older").hidden = !page.more;
    setState(`${view.rows.length} lines${page.more ? " (more: Older lines)" : ""}`);
    window.apisLogs.error = null;
    render();
  } catch (e) {
    setState(String(e.message || e));
    window.apisLogs.error = String(e.message || e);
  }
}

async function tail() {
  const f = filters();
  if (!$("#tail").checked || f.to) return;
  const generation = view.generation;
  let since = view.newestAt === null ? null : view.newestAt - TAIL_OVERLAP_S;
  if (since !== null && view.fromEpoch !== null) since = Math.max(since, view.fromEpoch);
  try {
    const page = await records.get("logs", { ...f, from: since === null ? f.from : since,
      order: "oldest", limit: 1000 });
    window.apisLogs.polls += 1;
    if (generation !== view.generation) return;
    const fresh = page.rows.filter((row) => !view.keys.has(key(row)));
    if (!fresh.length) return;
    for (const row of fresh) {
      view.keys.add(key(row));
      if (view.newestAt === null || row.at > view.newestAt) view.newestAt = row.at;
    }
    view.rows = [...fresh.reverse(), ...view.rows]
      .sort((a, b) => (b.at - a.at) ||
        (a.origin === b.origin ? b.seq - a.seq : (a.origin < b.origin ? 1 : -1)))
      .slice(0, KEEP);
    view.offset += fresh.length;
    setState(`${view.rows.length} lines (live)`);
    render();
  } catch (e) {
    setState(`live tail: ${e.message || e}`);
  }
}

function schedule() {
  if (view.timer) clearInterval(view.timer);
  view.timer = setInterval(tail, TAIL_MS);
}

window.addEventListener("DOMContentLoaded", async () => {
  for (const id of ["#unit", "#level", "#from", "#to"]) $(id).addEventListener("change", reload);
  let typing = null;
  $("#text").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(reload, 300); });
  $("#tail").addEventListener("change", () => tail());
  $("#older").addEventListener("click", () => more());
  try {
    const status = await records.load();
    records.fillUnits($("#unit"), status.units);
    $("#store").textContent = status.store;
    $("#zone").textContent = records.zone;
  } catch (e) {
    setState(String(e.message || e));
    window.apisLogs.error = String(e.message || e);
  }
  await reload();
  schedule();
});
