// The history page: the derived daily figures of the records store (apis records), as a
// chart of kWh per unit and day, deals per day, a table of the days and each unit's
// availability in the range.
"use strict";

const DAY_S = 86400;
const DEFAULT_DAYS = 14;
const $ = (sel) => document.querySelector(sel);
// For the browser tests: what the charts were last drawn with.
window.apisHistory = { draws: 0, days: [], energy: {}, deals: null, error: null };
const charts = { energy: null, deals: null };

function kwh(wh) { return wh === null || wh === undefined ? null : wh / 1000; }
function fmt(value, digits) { return value === null || value === undefined ? "--" : value.toFixed(digits); }

function quantity(row, name) {
  if (name === "deals") return row.chargedWh + row.dischargedWh;
  return row[name];
}

// From and To (dates in the records' zone): by default the last DEFAULT_DAYS days of data.
function defaultRange(status) {
  const last = status.unitData.last ?? status.logLines.last ?? status.figuresStoredThrough;
  if (last === null || last === undefined) return;
  const end = records.day(last);
  const start = records.day(last - (DEFAULT_DAYS - 1) * DAY_S);
  if (!$("#from").value) $("#from").value = start;
  if (!$("#to").value) $("#to").value = end;
}

// The day after a YYYY-MM-DD date (To is inclusive on the page, exclusive in the API).
function nextDay(text) {
  const [y, m, d] = text.split("-").map(Number);
  const t = new Date(Date.UTC(y, m - 1, d + 1));
  return t.toISOString().slice(0, 10);
}

function range() {
  const from = $("#from").value, to = $("#to").value;
  return { from, to: to ? nextDay(to) : "" };
}

// The x axis: the days shown, half a day of margin each side, a tick at each day (at most
// about 15 labelled).
function dayAxis(days) {
  const step = Math.max(1, Math.ceil(days.length / 15));
  return {
    scale: { time: true, range: (u, min, max) => (days.length
      ? [days[0] - 0.6 * DAY_S, days[days.length - 1] + 0.6 * DAY_S] : [min, max]) },
    axis: { splits: () => days.filter((d, i) => i % step === 0),
      values: (u, ticks) => ticks.map((t) => records.day(t)) },
  };
}

function draw(target, old, opts, data) {
  if (old) old.destroy();
  const el = $(target);
  el.innerHTML = "";
  opts.width = Math.max(320, el.clientWidth || 560);
  return new uPlot(opts, data, el);
}

function drawEnergy(rows) {
  const name = $("#quantity").value;
  const days = [...new Set(rows.map((r) => r.dayStart))].sort((a, b) => a - b);
  const units = [...new Set(rows.map((r) => r.unitId))].sort();
  const index = new Map(days.map((d, i) => [d, i]));
  const series = units.map(() => days.map(() => null));
  for (const r of rows) {
    series[units.indexOf(r.unitId)][index.get(r.dayStart)] = kwh(quantity(r, name));
  }
  const known = series.some((s) => s.some((v) => v !== null));
  $("#energy-note").textContent = known ? "" : "(no values of this kind in the range)";
  const x = dayAxis(days);
  charts.energy = draw("#chart-energy", charts.energy, {
    height: 260, tzDate: records.tzDate,
    scales: { x: x.scale },
    series: [{ label: "day", value: (u, v) => (v === null ? "--" : records.day(v)) },
      ...units.map((u, i) => ({ label: u, stroke: records.palette(i, units.length), width: 2,
        points: { show: true, size: 8 }, value: (p, v) => (v === null ? "--" : v.toFixed(3) + " kWh") }))],
    axes: [x.axis, { label: "kWh" }],
  }, [days, ...series]);
  window.apisHistory.days = days;
  window.apisHistory.energy = Object.fromEntries(units.map((u, i) => [u, series[i]]));
}

function drawDeals(rows) {
  // Each deal counts for both its units: with every unit shown, the cluster's count is
  // half the sum; with one unit, that unit's own.
  const one = $("#unit").value !== "";
  const days = [...new Set(rows.map((r) => r.dayStart))].sort((a, b) => a - b);
  const index = new Map(days.map((d, i) => [d, i]));
  const made = days.map(() => 0), completed = days.map(() => 0), aborted = days.map(() => 0);
  for (const r of rows) {
    const i = index.get(r.dayStart);
    made[i] += r.dealsMade; completed[i] += r.dealsCompleted; aborted[i] += r.dealsAborted;
  }
  const half = (a) => (one ? a : a.map((v) => v / 2));
  const data = [days, half(made), half(completed), half(aborted)];
  const bars = uPlot.paths.bars({ size: [0.25, 40], align: 0 });
  const x = dayAxis(days);
  charts.deals = draw("#chart-deals", charts.deals, {
    height: 260, tzDate: records.tzDate,
    scales: { x: x.scale, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    series: [{ label: "day", value: (u, v) => (v === null ? "--" : records.day(v)) },
      { label: "made", stroke: "#1c7ed6", fill: "#1c7ed655", paths: bars, points: { show: false } },
      { label: "completed", stroke: "#2f9e44", width: 2, points: { show: true, size: 8 } },
      { label: "aborted", stroke: "#d63939", width: 2, points: { show: true, size: 8 } }],
    axes: [x.axis, { label: "deals" }],
  }, data);
  window.apisHistory.deals = { days, made: data[1], completed: data[2], aborted: data[3] };
}

function drawTable(rows) {
  $("#days tbody").innerHTML = rows.map((r) => `<tr data-unit="${records.esc(r.unitId)}" data-day="${records.esc(r.day)}">
    <td>${records.esc(r.day)}</td><td>${records.esc(r.unitId)}</td>
    <td class="num">${fmt(kwh(r.chargedWh), 3)}</td><td class="num">${fmt(kwh(r.dischargedWh), 3)}</td>
    <td class="num">${fmt(kwh(r.boughtWh), 3)}</td><td class="num">${fmt(kwh(r.soldWh), 3)}</td>
    <td class="num">${fmt(kwh(r.pvWh), 3)}</td><td class="num">${fmt(kwh(r.loadWh), 3)}</td>
    <td class="num">${r.dealsMade} / ${r.dealsCompleted} / ${r.dealsAborted}</td>
    <td class="num">${r.availability === null ? "--" : (100 * r.availability).toFixed(1) + " %"}</td></tr>`).join("");
}

function drawAvailability(units) {
  $("#availability tbody").innerHTML = units.map((u) => `<tr data-unit="${records.esc(u.unitId)}">
    <td>${records.esc(u.unitId)}</td><td class="num">${u.samples}</td>
    <td class="num">${u.expectedSamples ?? "--"}</td>
    <td class="num">${u.availability === null ? "--" : (100 * u.availability).toFixed(1) + " %"}</td>
    <td>${u.downtimes.length ? u.downtimes.map((d) => `${records.time(d.startAt, false)} – ${d.endAt === null ? "now" : records.time(d.endAt, false)} (${d.missingSamples} missed)`).map(records.esc).join("<br>") : "none"}</td></tr>`).join("");
}

async function reload() {
  const params = { ...range(), unit: $("#unit").value };
  $("#csv-days").href = "/api/records/energy" + records.query({ ...params, resolution: "day", format: "csv", limit: 10000 });
  $("#csv-deals").href = "/api/records/deals" + records.query({ ...params, format: "csv", limit: 10000 });
  try {
    const [energy, available] = await Promise.all([
      records.get("energy", { ...params, resolution: "day", order: "oldest", limit: 10000 }),
      records.get("availability", params),
    ]);
    drawEnergy(energy.rows);
    drawDeals(energy.rows);
    drawTable(energy.rows);
    drawAvailability(available.units);
    $("#state").textContent = `${energy.rows.length} unit-days${energy.more ? " (more than shown)" : ""}`;
    window.apisHistory.draws += 1;
    window.apisHistory.error = null;
  } catch (e) {
    $("#state").textContent = String(e.message || e);
    window.apisHistory.error = String(e.message || e);
  }
}

window.addEventListener("DOMContentLoaded", async () => {
  for (const id of ["#unit", "#from", "#to", "#quantity"]) $(id).addEventListener("change", reload);
  try {
    const status = await records.load();
    records.fillUnits($("#unit"), status.units);
    $("#store").textContent = status.store;
    $("#zone").textContent = records.zone;
    $("#through").textContent = records.time(status.figuresStoredThrough);
    defaultRange(status);
  } catch (e) {
    $("#state").textContent = String(e.message || e);
    window.apisHistory.error = String(e.message || e);
    return;
  }
  await reload();
});
