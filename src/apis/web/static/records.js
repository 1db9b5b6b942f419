// Shared by the log viewer and the history page: reading /api/records, times in the
// records' time zone (the one their days are counted in), and small formatting helpers.
"use strict";

const records = {
  zone: "UTC",
  status: null,

  // GET /api/records/<path>?<params>; an error carries the server's `detail`.
  async get(path, params) {
    const r = await fetch(`/api/records/${path}${records.query(params)}`);
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`${r.status}: ${typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || data)}`);
    return data;
  },

  query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value === null || value === undefined || value === "") continue;
      q.append(key, String(value));
    }
    const text = q.toString();
    return text ? "?" + text : "";
  },

  async load() {
    records.status = await records.get("status");
    records.zone = records.status.timeZone || "UTC";
    return records.status;
  },

  // "2026-01-01 09:00:00" in the records' zone (sv-SE writes dates the ISO way).
  time(epoch, withSeconds = true) {
    if (epoch === null || epoch === undefined) return "--";
    const options = { timeZone: records.zone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", hour12: false };
    if (withSeconds) options.second = "2-digit";
    return new Intl.DateTimeFormat("sv-SE", options).format(new Date(epoch * 1000));
  },

  day(epoch) {
    return new Intl.DateTimeFormat("sv-SE", { timeZone: records.zone, year: "numeric",
      month: "2-digit", day: "2-digit" }).format(new Date(epoch * 1000));
  },

  // uPlot draws its time axis in the records' zone too.
  tzDate(ts) { return uPlot.tzDate(new Date(ts * 1000), records.zone); },

  fillUnits(select, units) {
    const keep = select.value;
    select.innerHTML = '<option value="">all units</option>' +
      units.map((u) => `<option value="${records.esc(u)}">${records.esc(u)}</option>`).join("");
    if (units.includes(keep)) select.value = keep;
  },

  esc(text) {
    return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
      '"': "&quot;", "'": "&#39;" }[c]));
  },

  palette(i, n) { return `hsl(${Math.round(360 * i / Math.max(n, 1))} 70% 45%)`; },
};
