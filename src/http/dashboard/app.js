// tally dashboard: plain JavaScript, no build step, no library. It reads tally's own JSON API
// (same origin; the Content-Security-Policy allows nothing else) every few seconds, sending
// If-None-Match with the ETag of the previous answer, and renders with textContent only.
"use strict";

const REFRESH_MS = 5000;
const KEY_SLOT = "tally.dashboard.key";
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

// ---- requests -------------------------------------------------------------------------------

class NeedKey extends Error {}

const cache = new Map(); // url -> {etag, body}
const net = { failed: 0, violations: 0, notModified: 0, external: new Set() };

async function getJson(url) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_SLOT);
  if (key) headers.Authorization = "Bearer " + key;
  const cached = cache.get(url);
  if (cached) headers["If-None-Match"] = cached.etag;
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store", credentials: "omit" });
  } catch (e) {
    net.failed += 1;
    throw new Error("tally did not answer " + url);
  }
  if (response.status === 304 && cached) {
    net.notModified += 1;
    return { body: cached.body, changed: false };
  }
  if (response.status === 401) throw new NeedKey();
  if (!response.ok) {
    net.failed += 1;
    let detail = "HTTP " + response.status;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not problem+json */ }
    throw new Error(url.split("?")[0] + ": " + detail);
  }
  const body = await response.json();
  const etag = response.headers.get("ETag");
  if (etag) cache.set(url, { etag, body }); else cache.delete(url);
  return { body, changed: true };
}

// ---- exact decimals (amounts arrive as strings; sums stay exact) ----------------------------

function parseDec(text) {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m) return null;
  const frac = m[3] || "";
  const n = BigInt(m[2] + frac);
  return { n: m[1] ? -n : n, scale: frac.length };
}

function addDec(a, b) {
  const scale = Math.max(a.scale, b.scale);
  const up = (d) => d.n * 10n ** BigInt(scale - d.scale);
  return { n: up(a) + up(b), scale };
}

function decToString(d) {
  const neg = d.n < 0n;
  let digits = (neg ? -d.n : d.n).toString().padStart(d.scale + 1, "0");
  if (d.scale > 0) digits = digits.slice(0, -d.scale) + "." + digits.slice(-d.scale);
  return (neg ? "-" : "") + digits;
}

// ---- small DOM helpers ------------------------------------------------------------------------

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function amount(value) { return value === null || value === undefined ? "—" : value; }

function badge(text, kind) { return el("span", text, { class: "badge " + kind }); }

function fillBody(tableId, rows) {
  const tbody = $(tableId).tBodies[0];
  tbody.replaceChildren(...rows);
}

function age(fromIso, toIso) {
  if (!fromIso) return "never fetched";
  const s = Math.max(0, Math.round((Date.parse(toIso) - Date.parse(fromIso)) / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " days";
}

function when(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : "—"; }

// ---- rendering --------------------------------------------------------------------------------

function renderBalances(report) {
  fillBody("totals", report.totals.map((t) => {
    const tr = el("tr", null, { "data-currency": t.currency });
    tr.append(el("th", t.currency, { scope: "row" }));
    for (const f of ["total", "available", "pending", "reserved"]) {
      tr.append(el("td", amount(t[f]), { class: "num", "data-field": f }));
    }
    const stale = t.stale_entries ? " (" + t.stale_entries + " stale)" : "";
    tr.append(el("td", t.entries + stale, { class: "num" }));
    return tr;
  }));

  const converted = $("converted");
  if (report.converted) {
    const c = report.converted;
    const rates = c.rates.map((r) => r.currency + " " + r.rate + " (" + r.as_of + ")").join(", ");
    let text = "In " + c.currency + ": total " + amount(c.total) + ", available " + amount(c.available) + ".";
    if (rates) text += " Rates: " + rates + ".";
    if (c.unconverted.length) text += " Not converted (no rate): " + c.unconverted.join(", ") + ".";
    converted.textContent = text;
    converted.hidden = false;
  } else {
    converted.hidden = true;
  }

  fillBody("accounts", report.accounts.map((a) => {
    const tr = el("tr", null, { "data-account": a.account });
    const name = el("th", a.account, { scope: "row" });
    name.append(el("div", a.provider, { class: "quiet" }));
    tr.append(name);
    const status = el("td", null, { "data-field": "status" });
    const kind = a.status === "fresh" ? "fresh" : a.status === "failed" ? "failed" : "stale";
    status.append(badge(a.status, kind));
    tr.append(status);
    tr.append(el("td", age(a.fetched_at, report.generated_at), { "data-field": "age" }));
    const error = a.error ? a.error.code + ": " + a.error.message : "";
    tr.append(el("td", error, { "data-field": "error", class: a.error ? "error-text" : "" }));
    return tr;
  }));

  const alerts = report.alerts;
  $("alerts-none").textContent = alerts === null ? "Unknown: tally cannot read the monitor states now." : "None.";
  $("alerts-none").hidden = alerts !== null && alerts.length > 0;
  fillBody("alerts", (alerts || []).map((a) => {
    const tr = el("tr", null, { "data-monitor": a.monitor });
    tr.append(el("th", a.monitor, { scope: "row" }));
    tr.append(el("td", a.account + " / " + a.wallet + " " + a.currency));
    tr.append(el("td", a.field + " " + a.condition + " " + a.threshold));
    tr.append(el("td", a.value, { class: "num", "data-field": "value" }));
    tr.append(el("td", when(a.since)));
    return tr;
  }));
}

function renderPayouts(list) {
  $("payouts-none").hidden = list.payouts.length > 0;
  fillBody("payouts", list.payouts.map((p) => {
    const tr = el("tr", null, { "data-payout": p.id });
    tr.append(el("th", p.id, { scope: "row" }));
    tr.append(el("td", p.account));
    const status = el("td");
    status.append(badge(p.status, p.error ? "bad" : "warn"));
    tr.append(status);
    tr.append(el("td", amount(p.amount) + " " + p.currency, { class: "num" }));
    tr.append(el("td", when(p.created_at)));
    tr.append(el("td", p.watched ? when(p.next_check_at) : "not watched"));
    return tr;
  }));
}

// One chart per currency: the closing total of each day, summed exactly over the accounts and
// wallets with a figure that day. Numbers only become floats for the pixel positions.
function renderDaily(daily) {
  const perCurrency = new Map();
  for (const row of daily.days) {
    const figure = row.closing && (row.closing.total ?? row.closing.available);
    const value = figure ? parseDec(figure) : null;
    if (!value) continue;
    const days = perCurrency.get(row.currency) || new Map();
    days.set(row.date, days.has(row.date) ? addDec(days.get(row.date), value) : value);
    perCurrency.set(row.currency, days);
  }
  const figures = [...perCurrency.keys()].sort().map((currency) =>
    chart(currency, [...perCurrency.get(currency).entries()].sort(([a], [b]) => (a < b ? -1 : 1)), daily));
  if (!figures.length) figures.push(el("p", "No daily figures yet.", { class: "quiet" }));
  $("charts").replaceChildren(...figures);
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function chart(currency, points, daily) {
  const W = 300, H = 120, L = 4, R = 4, T = 16, B = 18;
  const values = points.map(([, d]) => Number(decToString(d)));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (lo === hi) { lo -= 1; hi += 1; }
  const day = (date) => Date.parse(date + "T00:00:00Z");
  const x0 = day(daily.from), x1 = Math.max(day(daily.to), x0 + 1);
  const x = (date) => L + ((day(date) - x0) / (x1 - x0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const first = points[0], last = points[points.length - 1];
  const low = points.reduce((m, p) => (Number(decToString(p[1])) < Number(decToString(m[1])) ? p : m));
  const high = points.reduce((m, p) => (Number(decToString(p[1])) > Number(decToString(m[1])) ? p : m));

  const figure = el("figure", null, { "data-currency": currency });
  const caption = el("figcaption", currency + " ");
  caption.append(el("span", "last " + decToString(last[1]) + " on " + last[0], { class: "range" }));
  figure.append(caption);
  const label = currency + " closing total per day from " + daily.from + " to " + daily.to + ": " +
    points.length + " days with figures; first " + decToString(first[1]) + " on " + first[0] + ", last " +
    decToString(last[1]) + " on " + last[0] + ", lowest " + decToString(low[1]) + ", highest " + decToString(high[1]) + ".";
  const root = svg("svg", { class: "chart", viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": label });
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  const coords = points.map(([date], i) => x(date).toFixed(1) + "," + y(values[i]).toFixed(1));
  if (points.length > 1) root.append(svg("polyline", { class: "line", points: coords.join(" ") }));
  const [lx, ly] = coords[coords.length - 1].split(",");
  root.append(svg("circle", { class: "dot", cx: lx, cy: ly, r: 3 }));
  const text = (content, attrs) => { const t = svg("text", attrs); t.textContent = content; return t; };
  root.append(text("high " + decToString(high[1]), { x: L, y: 11 }));
  root.append(text(daily.from, { x: L, y: H - 4 }));
  root.append(text(daily.to, { x: W - R, y: H - 4, "text-anchor": "end" }));
  figure.append(root);
  return figure;
}

// ---- what left the page (the browser test reads this) ---------------------------------------

function recordNetwork() {
  for (const entry of performance.getEntriesByType("resource")) {
    const origin = new URL(entry.name, location.href).origin;
    if (origin !== location.origin) net.external.add(origin);
  }
  const out = $("net");
  out.dataset.external = String(net.external.size);
  out.dataset.failed = String(net.failed);
  out.dataset.violations = String(net.violations);
  out.dataset.notModified = String(net.notModified);
  // Wider than the window means sideways scrolling of the whole page (tables scroll on their own).
  out.dataset.overflow = String(document.documentElement.scrollWidth > window.innerWidth);
  out.dataset.refreshes = String(Number(out.dataset.refreshes) + 1);
  out.textContent = net.external.size ? "Requests outside tally: " + [...net.external].join(", ") : "";
}

document.addEventListener("securitypolicyviolation", (e) => {
  net.violations += 1;
  net.external.add(e.blockedURI || "blocked");
});

// ---- the loop ---------------------------------------------------------------------------------

function isoDate(ms) { return new Date(ms).toISOString().slice(0, 10); }

async function refresh() {
  const status = $("status");
  const today = Date.now();
  const dailyUrl = "/balances/daily?from=" + isoDate(today - 29 * 86400000) + "&to=" + isoDate(today);
  try {
    const [balances, payouts, daily] = await Promise.all([
      getJson("/balances"), getJson("/payouts?final=false"), getJson(dailyUrl),
    ]);
    $("key-form").hidden = true;
    $("main").hidden = false;
    if (balances.changed) renderBalances(balances.body);
    if (payouts.changed) renderPayouts(payouts.body);
    if (daily.changed) renderDaily(daily.body);
    if (balances.changed || payouts.changed || daily.changed || status.classList.contains("error")) {
      status.classList.remove("error");
      const complete = balances.body.complete ? "every account fresh" : "not every account is fresh";
      status.textContent = "Figures as of " + when(balances.body.generated_at) + " (" + complete + ").";
    }
  } catch (e) {
    if (e instanceof NeedKey) {
      askForKey(sessionStorage.getItem(KEY_SLOT) ? "That key was not accepted. Enter another." : "");
      recordNetwork();
      return; // resumes when a key is entered
    }
    status.classList.add("error");
    status.textContent = "Could not refresh: " + e.message + ". Showing the last figures; trying again.";
  }
  recordNetwork();
  setTimeout(refresh, REFRESH_MS);
}

function askForKey(message) {
  sessionStorage.removeItem(KEY_SLOT);
  cache.clear();
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("key-error").textContent = message;
  $("status").textContent = "An API key is needed.";
  $("key").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_SLOT, key);
    $("key").value = "";
    refresh();
  });
  refresh();
});
