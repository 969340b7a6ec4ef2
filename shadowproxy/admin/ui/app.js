/* shadowproxy admin UI: endpoints → fields → side-by-side exchanges.
 *
 * Plain JS, no dependencies, no external resources. Every value from the API is put
 * in the page as text (textContent), never as HTML. The admin token (when the server
 * has one) is kept in sessionStorage and sent as "Authorization: Bearer"; it can be
 * given once as "#token=..." in the URL fragment, which browsers never send.
 */
"use strict";
(function () {
  const TOKEN_KEY = "shadowproxy.token";
  const WINDOW_KEY = "shadowproxy.window";
  const API = "api/v1/";

  const state = {
    authRequired: false,
    window: sessionStorage.getItem(WINDOW_KEY) || "1h",
    sort: { key: "diff_rate", dir: -1 },
    filter: "",
    showNoise: true,
    noiseAll: false,
    render: 0,
  };

  // ------------------------------------------------------------------ DOM helpers

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = v;
        else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else if (k === "dataset") Object.assign(el.dataset, v);
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    append(el, kids);
    return el;
  }
  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      el.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return el;
  }
  const $ = (sel, root) => (root || document).querySelector(sel);
  const enc = encodeURIComponent;

  function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
  function pct(x) {
    if (x === null || x === undefined) return "–";
    const v = x * 100;
    return (v > 0 && v < 0.1 ? v.toFixed(2) : v.toFixed(1)) + "%";
  }
  function ms(x) {
    if (x === null || x === undefined) return "–";
    const v = x * 1000;
    return v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0);
  }
  function fmtTime(t) {
    if (!t) return "–";
    const d = new Date(t * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1024 / 1024).toFixed(1) + " MiB";
  }
  function fmtP(p) {
    if (p === null || p === undefined) return "–";
    return p < 0.0001 ? p.toExponential(1) : p.toFixed(4);
  }
  function bar(rate, cls) {
    const fill = h("span");
    fill.style.width = Math.min(100, Math.max(rate > 0 ? 2 : 0, rate * 100)) + "%";
    return h("span", { class: "bar" + (cls ? " " + cls : "") }, fill);
  }
  function verdictBadge(v) { return h("span", { class: "badge " + v, text: v }); }

  let toastTimer = null;
  function toast(msg, bad) {
    const t = $("#toast");
    t.textContent = msg;
    t.className = "toast" + (bad ? " bad" : "");
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 6000 : 3000);
  }

  // ------------------------------------------------------------------ token and API

  function takeHashToken() {
    const hash = location.hash;
    const m = /([#&?])token=([^&]*)/.exec(hash);
    if (!m) return;
    try { sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[2])); } catch (e) { /* ignore */ }
    let rest = hash.slice(0, m.index + (m[1] === "#" ? 1 : 0)) + hash.slice(m.index + m[0].length);
    rest = rest.replace(/^#&/, "#").replace(/[?&]$/, "");
    if (rest === "#" || rest === "") rest = "#/";
    history.replaceState(null, "", location.pathname + location.search + rest);
  }

  let tokenPrompt = null;
  function askToken(message) {
    if (tokenPrompt) return tokenPrompt;
    const dlg = $("#token-dialog");
    const err = $("#token-error");
    err.hidden = !message;
    err.textContent = message || "";
    dlg.hidden = false;
    const input = $("#token-input");
    input.value = "";
    input.focus();
    tokenPrompt = new Promise((resolve) => {
      const form = $("#token-form");
      const onSubmit = (ev) => {
        ev.preventDefault();
        const v = input.value.trim();
        if (!v) { err.hidden = false; err.textContent = "Enter the token."; return; }
        sessionStorage.setItem(TOKEN_KEY, v);
        form.removeEventListener("submit", onSubmit);
        dlg.hidden = true;
        tokenPrompt = null;
        resolve();
      };
      form.addEventListener("submit", onSubmit);
    });
    return tokenPrompt;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, opts) {
    opts = opts || {};
    for (let attempt = 0; attempt < 5; attempt++) {
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (state.authRequired && !token) { await askToken(); continue; }
      const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
      if (token) headers.Authorization = "Bearer " + token;
      let res;
      try {
        res = await fetch(API + path, { method: opts.method || "GET", headers, body: opts.body,
                                        cache: "no-store", credentials: "omit" });
      } catch (e) {
        throw new ApiError(0, "the admin server cannot be reached (" + e.message + ")");
      }
      if (res.status === 401) {
        state.authRequired = true;
        sessionStorage.removeItem(TOKEN_KEY);
        await askToken(token ? "That token was not accepted." : "");
        continue;
      }
      const text = await res.text();
      let body = null;
      try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: text }; }
      if (!res.ok) throw new ApiError(res.status, (body && body.error) || res.statusText);
      return body;
    }
    throw new ApiError(401, "unauthorized");
  }

  function windowQuery() { return "since=" + enc(state.window); }

  // ------------------------------------------------------------------ summary and mirror

  let mirrorBusy = false;
  async function refreshStatus() {
    let st;
    try { st = await api("status"); } catch (e) {
      $("#summary").replaceChildren(h("div", { class: "chip off" },
        h("div", { class: "n error", text: "offline" }), h("div", { class: "l", text: e.message })));
      return;
    }
    const o = st.outcomes || {};
    const sum = (prefix) => Object.entries(o).filter(([k]) => k === prefix || k.startsWith(prefix + "{"))
      .reduce((a, [, v]) => a + v, 0);
    const chip = (n, l, cls, title) => h("div", { class: "chip" + (cls ? " " + cls : ""), title },
      h("div", { class: "n", text: typeof n === "number" ? fmtInt(n) : n }), h("div", { class: "l", text: l }));
    const cand = sum("candidate_error") + sum("candidate_timeout");
    const m = st.mirror;
    $("#summary").replaceChildren(
      chip(st.requests, "requests", "", "Every request ends in exactly one outcome (since start)"),
      chip(sum("mirrored"), "mirrored"),
      chip(sum("compared"), "compared"),
      chip(sum("sampled_out"), "sampled out"),
      chip(sum("not_eligible"), "not eligible"),
      chip(sum("dropped"), "dropped", sum("dropped") ? "warn" : ""),
      chip(cand, "candidate failed", cand ? "warn" : ""),
      chip(`${st.queues.mirror} / ${st.queues.compare} / ${st.queues.store}`, "queues m / c / s", "",
           "mirror / comparator / store writer queue depths"),
      chip(st.store.acknowledged === undefined ? "–" : st.store.acknowledged, "stored",
           st.store.failed ? "warn" : "", st.store.failed ? `${st.store.failed} failed` : ""),
      chip(m.effective ? pct(m.sample) : "off", "mirroring", m.effective ? "" : "off"),
    );
    if (!mirrorBusy) showMirror(m);
  }

  function showMirror(m) {
    const box = $("#mirror-enabled");
    box.checked = !!m.enabled;
    box.disabled = !m.candidate_configured;
    $("#mirror-label").textContent = m.enabled ? "Mirror on" : "Mirror off";
    const input = $("#mirror-sample");
    if (document.activeElement !== input) input.value = String(+(m.sample * 100).toFixed(4));
  }

  async function putMirror(body) {
    mirrorBusy = true;
    try {
      const m = await api("mirror", { method: "PUT", body: JSON.stringify(body),
                                       headers: { "Content-Type": "application/json" } });
      showMirror(m);
      toast(`Mirroring ${m.enabled ? "on" : "off"}, sample ${pct(m.sample)}`);
      refreshStatus();
    } catch (e) {
      toast("Mirror switch refused: " + e.message, true);
      try { showMirror(await api("mirror")); } catch (e2) { /* shown by the status strip */ }
    } finally {
      mirrorBusy = false;
    }
  }

  // ------------------------------------------------------------------ routing

  function setCrumbs(...parts) {
    const out = [h("a", { href: "#/", text: "Endpoints" })];
    for (const p of parts) {
      out.push(h("span", { class: "sep", text: "›" }));
      out.push(p.href ? h("a", { href: p.href }, p.label) : h("span", null, p.label));
    }
    $("#crumbs").replaceChildren(...out);
  }

  function setTab(name) {
    for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === name);
  }

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const q = raw.indexOf("?");
    const path = q >= 0 ? raw.slice(0, q) : raw;
    const params = new URLSearchParams(q >= 0 ? raw.slice(q + 1) : "");
    const parts = path.split("/").filter(Boolean).map((s) => {
      try { return decodeURIComponent(s); } catch (e) { return s; }
    });
    return { parts, params };
  }

  async function route() {
    const gen = ++state.render;
    const view = $("#view");
    const { parts, params } = parseHash();
    const live = () => gen === state.render;
    try {
      if (parts.length === 0) { setTab("endpoints"); await viewEndpoints(view, live); }
      else if (parts[0] === "e" && parts.length === 2) { setTab("endpoints"); await viewEndpoint(view, live, parts[1]); }
      else if (parts[0] === "e" && parts.length === 4 && parts[2] === "f") {
        setTab("endpoints"); await viewField(view, live, parts[1], parts[3], params.get("x"));
      }
      else if (parts[0] === "exchanges") { setTab("exchanges"); await viewExchanges(view, live, params); }
      else if (parts[0] === "x" && parts.length === 2) { setTab("exchanges"); await viewExchange(view, live, parts[1]); }
      else if (parts[0] === "noise") { setTab("noise"); await viewNoise(view, live); }
      else if (parts[0] === "config") { setTab("config"); await viewConfig(view, live); }
      else { setCrumbs({ label: "not found" }); view.replaceChildren(h("p", { class: "empty", text: "No such page." })); }
    } catch (e) {
      if (!live()) return;
      view.replaceChildren(h("div", { class: "panel" }, h("h2", { class: "error", text: "Could not load" }),
        h("p", { text: e.message })));
    }
  }

  // ------------------------------------------------------------------ endpoints

  function sparkline(series) {
    const NS = "http://www.w3.org/2000/svg";
    const w = 90, hgt = 22;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", w); svg.setAttribute("height", hgt);
    svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
    const base = document.createElementNS(NS, "line");
    base.setAttribute("x1", 0); base.setAttribute("x2", w);
    base.setAttribute("y1", hgt - 1); base.setAttribute("y2", hgt - 1);
    svg.append(base);
    if (series && series.length) {
      const rates = series.map((p) => (p[1] ? p[2] / p[1] : 0));
      const max = Math.max(0.01, ...rates);
      const step = rates.length > 1 ? w / (rates.length - 1) : 0;
      const pts = rates.map((r, i) => `${(rates.length > 1 ? i * step : w / 2).toFixed(1)},` +
        `${(hgt - 2 - (r / max) * (hgt - 4)).toFixed(1)}`);
      if (pts.length === 1) { const y = pts[0].split(",")[1]; pts.splice(0, 1, `0,${y}`, `${w},${y}`); }
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", pts.join(" "));
      svg.append(line);
      const title = document.createElementNS(NS, "title");
      title.textContent = "diff rate per bucket, peak " + pct(Math.max(...rates));
      svg.append(title);
    }
    return svg;
  }

  // primary / candidate (· secondary) latency; the candidate is coloured against the
  // side the latency checks judge it against: the secondary where it answered (sent
  // from the same process at the same moments: like with like), else primary
  function latencyCell(p, c, s, baseline) {
    const onSec = baseline === "secondary" && s;
    const b = onSec ? s : p;
    const cls = b && c && c > b * 1.1 && c - b > 0.001 ? "slower" : b && c && c < b * 0.9 && b - c > 0.001 ? "faster" : "";
    const ratio = b && c ? (c / b).toFixed(2) + "x" : "–";
    const title = `candidate ÷ ${onSec ? "secondary" : "primary"} ${ratio}: the ratio the latency checks judge`;
    const td = h("td", { class: "num", title, dataset: { baseline: onSec ? "secondary" : "primary" } },
      ms(p), " / ", h("span", { class: cls, text: ms(c) }));
    if (s) td.append(" · ", h("span", { class: onSec ? "judged" : "muted", text: "sec " + ms(s) }));
    return td;
  }

  function lat(e, q) {
    const l = e.latency;
    return latencyCell(l.primary[q], l.candidate[q], l.secondary ? l.secondary[q] : null, l.baseline);
  }

  const ENDPOINT_COLS = [
    ["endpoint", "Endpoint", false],
    ["requests", "Requests", true, "Requests seen since start (all outcomes)"],
    ["exchanges", "Compared", true, "Exchanges compared in the window"],
    ["diff_rate", "Diff", true, "Share of exchanges with a real (non-noise) difference"],
    ["noise_rate", "Noise", true, "Share of exchanges whose only differences are learned noise"],
    ["errors", "Errors", true, "Candidate failed (connect, timeout, reset…)"],
    ["p50", "p50 ms pri / cand · sec", true, "The candidate is compared with the secondary where it answered (in bold), else with primary: as the latency checks judge it"],
    ["p99", "p99 ms pri / cand · sec", true, "The candidate is compared with the secondary where it answered (in bold), else with primary: as the latency checks judge it"],
    ["top", "Differing fields", false],
    ["trend", "Diff trend", false],
  ];

  function sortValue(e, key) {
    switch (key) {
      case "requests": return e._requests;
      case "p50": return e.latency.candidate.p50 || 0;
      case "p99": return e.latency.candidate.p99 || 0;
      case "endpoint": return e.endpoint;
      default: return e[key] || 0;
    }
  }

  async function viewEndpoints(view, live) {
    setCrumbs();
    const data = await api("endpoints?" + windowQuery());
    if (!live()) return;
    const eps = data.endpoints;
    const finals = ["not_eligible", "sampled_out", "dropped", "compared", "candidate_error", "candidate_timeout"];
    for (const e of eps) {
      e._requests = Object.entries(e.counters || {}).filter(([k]) => finals.includes(k.split("{")[0]))
        .reduce((a, [, v]) => a + v, 0);
    }
    const tbody = h("tbody");
    const head = h("tr");
    const filter = h("input", { type: "search", id: "endpoint-filter", placeholder: "Filter endpoints…",
                                value: state.filter });
    const draw = () => {
      const f = state.filter.toLowerCase();
      const rows = eps.filter((e) => !f || e.endpoint.toLowerCase().includes(f));
      const { key, dir } = state.sort;
      rows.sort((a, b) => {
        const x = sortValue(a, key), y = sortValue(b, key);
        return (x < y ? -1 : x > y ? 1 : 0) * dir || a.endpoint.localeCompare(b.endpoint);
      });
      for (const th of head.children) {
        th.classList.toggle("sorted-asc", th.dataset.key === key && dir > 0);
        th.classList.toggle("sorted-desc", th.dataset.key === key && dir < 0);
      }
      tbody.replaceChildren(...rows.map(endpointRow));
      if (!rows.length) {
        tbody.append(h("tr", null, h("td", { colspan: ENDPOINT_COLS.length, class: "empty",
          text: eps.length ? "No endpoint matches the filter." : "No traffic compared in this window yet." })));
      }
    };
    for (const [key, label, sortable, title] of ENDPOINT_COLS) {
      const numeric = !["endpoint", "top", "trend"].includes(key);
      const th = h("th", { class: (numeric ? "num " : "") + (sortable || key === "endpoint" ? "sortable" : ""),
                           dataset: { key }, title }, label);
      if (sortable || key === "endpoint") {
        th.addEventListener("click", () => {
          state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: key === "endpoint" ? 1 : -1 };
          draw();
        });
      }
      head.append(th);
    }
    filter.addEventListener("input", () => { state.filter = filter.value; draw(); });
    const totals = eps.reduce((a, e) => { a.x += e.exchanges; a.d += e.diffs; a.n += e.noise; a.e += e.errors; return a; },
                              { x: 0, d: 0, n: 0, e: 0 });
    view.replaceChildren(h("div", { class: "panel" },
      h("div", { class: "toolbar" },
        h("h2", { text: "Endpoints" }), filter,
        h("span", { class: "muted" },
          `${fmtInt(totals.x)} exchanges compared in the window: ${fmtInt(totals.d)} with differences, ` +
          `${fmtInt(totals.n)} noise only, ${fmtInt(totals.e)} candidate errors`)),
      h("table", { class: "grid", id: "endpoints" }, h("thead", null, head), tbody)));
    draw();
  }

  function endpointRow(e) {
    const href = "#/e/" + enc(e.endpoint);
    const top = e.top_fields.length
      ? h("span", { class: "fieldlist" }, e.top_fields.map((f) => h("code", { title: `${f.exchanges} exchanges` }, f.field)))
      : h("span", { class: "muted", text: e.exchanges ? "none" : "" });
    const none = !e.exchanges;
    const why = Object.entries(e.counters || {}).filter(([k]) => !["mirrored", "compared"].includes(k))
      .map(([k, v]) => `${k} ${v}`).join(", ");
    const tr = h("tr", { class: "clickable" + (none ? " dim" : ""), dataset: { endpoint: e.endpoint } },
      h("td", null, h("a", { href, class: "endpoint-link", text: e.endpoint })),
      h("td", { class: "num", title: Object.entries(e.counters || {}).map(([k, v]) => `${k}: ${v}`).join("\n") },
        fmtInt(e._requests)),
      h("td", { class: "num" }, fmtInt(e.exchanges)),
      h("td", { class: "num" }, none ? "–" : [bar(e.diff_rate), h("span", { class: e.diffs ? "error" : "", text: pct(e.diff_rate) })]),
      h("td", { class: "num" }, none ? "–" : pct(e.noise_rate)),
      h("td", { class: "num" + (e.errors ? " error" : "") }, fmtInt(e.errors)),
      lat(e, "p50"),
      lat(e, "p99"),
      h("td", null, none ? h("span", { class: "muted", text: why ? "not compared: " + why : "" }) : top),
      h("td", null, none ? null : sparkline(e.series)));
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = href; });
    return tr;
  }

  // ------------------------------------------------------------------ one endpoint

  function stat(label, value, title) {
    return h("div", { class: "stat", title }, h("div", { class: "l", text: label }), h("div", { class: "n" }, value));
  }

  function evidenceText(ev) {
    if (!ev) return h("span", { class: "muted", text: "no secondary data" });
    const r = ev.n ? ev.r / ev.n : 0, s = ev.n ? ev.s / ev.n : 0;
    return h("span", { class: "evidence", title: `N=${ev.n} exchanges with a secondary answer; ` +
        `R=${ev.r} candidate≠primary; S=${ev.s} secondary≠primary; p=${fmtP(ev.p_value)}` },
      `cand ${ev.r}/${ev.n} (${pct(r)}) vs sec ${ev.s}/${ev.n} (${pct(s)})`,
      ev.p_value !== null && ev.p_value !== undefined ? `, p=${fmtP(ev.p_value)}` : "");
  }

  function noiseBadge(f) {
    const ev = f.evidence;
    if (f.noise) {
      return h("span", null, h("span", { class: "badge noise", text: "noise" }),
        ev && ev.provisional ? h("span", { class: "badge prov", text: "provisional", title: "fewer than noise.min_samples exchanges" }) : null);
    }
    return h("span", { class: "badge real", text: "real" });
  }

  async function viewEndpoint(view, live, name) {
    setCrumbs({ label: name });
    const [ep, fields] = await Promise.all([
      api("endpoints/" + enc(name) + "?" + windowQuery()).catch((e) => { if (e.status === 404) return null; throw e; }),
      api("endpoints/" + enc(name) + "/fields?" + windowQuery()),
    ]);
    if (!live()) return;
    const panel = h("div", { class: "panel" }, h("h2", null, "Endpoint ", h("code", { text: name })));
    if (ep) {
      panel.append(h("div", { class: "stats" },
        stat("compared", fmtInt(ep.exchanges)),
        stat("diff", h("span", { class: ep.diffs ? "error" : "", text: `${pct(ep.diff_rate)} (${fmtInt(ep.diffs)})` })),
        stat("noise only", `${pct(ep.noise_rate)} (${fmtInt(ep.noise)})`),
        stat("matches", fmtInt(ep.matches)),
        stat("candidate errors", fmtInt(ep.errors)),
        stat("5xx pri / cand", `${fmtInt(ep.primary_5xx)} / ${fmtInt(ep.candidate_5xx)}`),
        stat("p50 ms pri / cand · sec", [...lat(ep, "p50").childNodes]),
        stat("p95 ms pri / cand · sec", [...lat(ep, "p95").childNodes]),
        stat("p99 ms pri / cand · sec", [...lat(ep, "p99").childNodes]),
        stat("trend", sparkline(ep.series))));
      panel.append(h("p", null,
        h("a", { href: `#/exchanges?endpoint=${enc(name)}&verdict=diff`, text: "Exchanges with differences →" }), "  ",
        h("a", { href: `#/exchanges?endpoint=${enc(name)}&verdict=error`, text: "Candidate errors →" })));
    }
    const showNoise = h("input", { type: "checkbox", id: "show-noise" });
    showNoise.checked = state.showNoise;
    const tbody = h("tbody");
    const draw = () => {
      const rows = fields.fields.filter((f) => state.showNoise || !f.noise);
      tbody.replaceChildren(...rows.map((f) => fieldRow(name, f)));
      if (!rows.length) {
        tbody.append(h("tr", null, h("td", { colspan: 6, class: "empty",
          text: fields.fields.length ? "Only noise fields (hidden)." : "No differences in this window." })));
      }
    };
    showNoise.addEventListener("change", () => { state.showNoise = showNoise.checked; draw(); });
    const table = h("div", { class: "panel" },
      h("div", { class: "toolbar" }, h("h2", { text: "Differing fields" }),
        h("label", null, showNoise, " show noise fields"),
        h("span", { class: "muted", text: "Noise: fields production differs on with itself (primary vs secondary) as often as with the candidate." })),
      h("table", { class: "grid", id: "fields" },
        h("thead", null, h("tr", null,
          h("th", { text: "Field" }), h("th", { class: "num", text: "Differs in" }),
          h("th", { class: "num", text: "Differences" }), h("th", { text: "Kinds" }),
          h("th", { text: "Verdict" }), h("th", { text: "Evidence (primary vs candidate / secondary)" }))),
        tbody));
    view.replaceChildren(panel, table);
    draw();
  }

  function fieldRow(endpoint, f) {
    const href = `#/e/${enc(endpoint)}/f/${enc(f.field)}`;
    const tr = h("tr", { class: "clickable" + (f.noise ? " dim" : ""), dataset: { field: f.field } },
      h("td", { class: "path" }, h("a", { href, class: "field-link", text: f.field })),
      h("td", { class: "num" }, bar(f.diff_rate, f.noise ? "noise" : ""), `${pct(f.diff_rate)} (${fmtInt(f.exchanges)})`),
      h("td", { class: "num", text: fmtInt(f.count) }),
      h("td", null, Object.entries(f.kinds).map(([k, n]) => h("span", { class: "badge kind", text: `${k} ${n}` }))),
      h("td", null, noiseBadge(f)),
      h("td", null, evidenceText(f.evidence)));
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = href; });
    return tr;
  }

  // ------------------------------------------------------------------ one field

  function explainField(f) {
    const ev = f.evidence;
    if (!ev) {
      return h("p", { class: "explain " + (f.noise ? "noise" : "real") },
        f.noise ? "All differences on this field were judged noise when they were recorded."
                : "No secondary answers for this endpoint: noise cannot be learned, every difference counts.");
    }
    const r = ev.n ? ev.r / ev.n : 0, s = ev.n ? ev.s / ev.n : 0;
    let verdict;
    if (f.noise && ev.provisional) verdict = `Provisionally noise: the secondary differs too, and fewer than the required exchanges have been seen to decide.`;
    else if (f.noise) verdict = `Noise: the candidate does not differ more often than production differs from itself (p = ${fmtP(ev.p_value)}).`;
    else if (ev.s === 0) verdict = "A real difference: production never differed from itself on this field.";
    else verdict = `A real difference: the candidate differs significantly more often than production differs from itself (p = ${fmtP(ev.p_value)}).`;
    return h("p", { class: "explain " + (f.noise ? "noise" : "real") },
      `Among ${fmtInt(ev.n)} exchanges with a secondary answer, the candidate differed from the primary on this field in ${fmtInt(ev.r)} (${pct(r)}), ` +
      `the secondary (a second copy of production) in ${fmtInt(ev.s)} (${pct(s)}). `, h("b", { text: verdict }));
  }

  async function viewField(view, live, endpoint, field, selected) {
    setCrumbs({ label: endpoint, href: "#/e/" + enc(endpoint) }, { label: field });
    const [fields, list] = await Promise.all([
      api("endpoints/" + enc(endpoint) + "/fields?" + windowQuery()),
      api(`exchanges?endpoint=${enc(endpoint)}&field=${enc(field)}&limit=50&${windowQuery()}`),
    ]);
    if (!live()) return;
    const f = fields.fields.find((x) => x.field === field);
    const panel = h("div", { class: "panel", id: "field-panel" },
      h("h2", null, h("code", { text: field }), " on ", h("code", { text: endpoint }), " ",
        f ? noiseBadge(f) : null));
    if (f) {
      panel.append(h("div", { class: "stats" },
        stat("differs in", `${pct(f.diff_rate)} (${fmtInt(f.exchanges)} of ${fmtInt(fields.exchanges)})`),
        stat("differences", fmtInt(f.count)),
        stat("judged noise", `${fmtInt(f.noise_count)} (${pct(f.noise_rate)})`),
        stat("kinds", h("span", null, Object.entries(f.kinds).map(([k, n]) => h("span", { class: "badge kind", text: `${k} ${n}` }))))));
      panel.append(explainField(f));
    } else {
      panel.append(h("p", { class: "muted", text: "No differences on this field in the window." }));
    }
    const rows = list.exchanges.slice().sort((a, b) => (b.sampled - a.sampled) || (b.time - a.time));
    const detail = h("div", { id: "compare" });
    const tbody = h("tbody");
    const select = (id) => {
      for (const tr of tbody.children) tr.classList.toggle("selected", tr.dataset.id === id);
      history.replaceState(null, "", `#/e/${enc(endpoint)}/f/${enc(field)}?x=${enc(id)}`);
      renderExchangeInto(detail, id, field, live);
    };
    for (const x of rows) {
      const tr = h("tr", { class: "clickable", dataset: { id: x.id } },
        h("td", { text: fmtTime(x.time) }),
        h("td", { class: "path", text: x.method + " " + x.path + (x.query ? "?" + x.query : "") }),
        h("td", null, verdictBadge(x.verdict)),
        h("td", { class: "num", text: `${x.primary_status} / ${x.candidate_status}` +
                                      (x.secondary_status !== null ? ` / ${x.secondary_status}` : "") }),
        h("td", { class: "num", text: x.diff_count }),
        h("td", { text: x.sampled ? "bodies" : "summary" }));
      tr.addEventListener("click", () => select(x.id));
      tbody.append(tr);
    }
    const listPanel = h("div", { class: "panel" },
      h("h3", { text: `Exchanges with a difference on ${field} (newest first; the first of each field keep their bodies)` }),
      rows.length ? h("div", { class: "scrollbox" }, h("table", { class: "grid", id: "field-exchanges" },
        h("thead", null, h("tr", null, h("th", { text: "Time" }), h("th", { text: "Request" }),
          h("th", { text: "Verdict" }), h("th", { class: "num", text: "Status pri / cand / sec" }),
          h("th", { class: "num", text: "Diffs" }), h("th", { text: "Kept" }))), tbody))
        : h("p", { class: "empty", text: "No exchanges in this window." }));
    view.replaceChildren(panel, listPanel, detail);
    const first = (selected && rows.find((x) => x.id === selected)) || rows.find((x) => x.sampled) || rows[0];
    if (first) select(first.id);
  }

  // ------------------------------------------------------------------ exchanges list

  async function viewExchanges(view, live, params) {
    setCrumbs({ label: "Exchanges" });
    const endpoint = params.get("endpoint") || "";
    const verdict = params.get("verdict") || "";
    const [eps, first] = await Promise.all([
      api("endpoints?" + windowQuery()),
      api(`exchanges?limit=50&${windowQuery()}` + (endpoint ? "&endpoint=" + enc(endpoint) : "") +
          (verdict ? "&verdict=" + enc(verdict) : "")),
    ]);
    if (!live()) return;
    const epSel = h("select", { id: "filter-endpoint" }, h("option", { value: "", text: "all endpoints" }),
      eps.endpoints.map((e) => h("option", { value: e.endpoint, text: e.endpoint })));
    epSel.value = endpoint;
    const vSel = h("select", { id: "filter-verdict" }, h("option", { value: "", text: "all verdicts" }),
      ["diff", "noise", "match", "error"].map((v) => h("option", { value: v, text: v })));
    vSel.value = verdict;
    const go = () => {
      const q = new URLSearchParams();
      if (epSel.value) q.set("endpoint", epSel.value);
      if (vSel.value) q.set("verdict", vSel.value);
      location.hash = "#/exchanges" + (q.toString() ? "?" + q.toString() : "");
    };
    epSel.addEventListener("change", go);
    vSel.addEventListener("change", go);
    const tbody = h("tbody");
    const add = (rows) => {
      for (const x of rows) {
        const href = "#/x/" + enc(x.id);
        const tr = h("tr", { class: "clickable", dataset: { id: x.id } },
          h("td", { text: fmtTime(x.time) }),
          h("td", null, h("a", { href: "#/e/" + enc(x.endpoint), text: x.endpoint })),
          h("td", { class: "path" }, h("a", { href, text: x.method + " " + x.path + (x.query ? "?" + x.query : "") })),
          h("td", null, verdictBadge(x.verdict)),
          h("td", { class: "num", text: `${x.primary_status} / ${x.candidate_status}` }),
          h("td", { class: "num", text: `${ms(x.primary_latency)} / ${ms(x.candidate_latency)}` }),
          h("td", { class: "num", text: x.diff_count }),
          h("td", { class: "num", text: x.noise_count }),
          h("td", { text: x.candidate_error || "" }));
        tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = href; });
        tbody.append(tr);
      }
    };
    add(first.exchanges);
    let offset = first.exchanges.length;
    const more = h("button", { class: "secondary more", type: "button", text: "Load more" });
    more.hidden = first.exchanges.length < 50;
    more.addEventListener("click", async () => {
      const next = await api(`exchanges?limit=50&offset=${offset}&${windowQuery()}` +
        (endpoint ? "&endpoint=" + enc(endpoint) : "") + (verdict ? "&verdict=" + enc(verdict) : ""));
      add(next.exchanges);
      offset += next.exchanges.length;
      more.hidden = next.exchanges.length < 50;
    });
    view.replaceChildren(h("div", { class: "panel" },
      h("div", { class: "toolbar" }, h("h2", { text: "Exchanges" }), epSel, vSel,
        h("span", { class: "muted", text: "newest first" })),
      first.exchanges.length ? h("table", { class: "grid", id: "exchanges" },
        h("thead", null, h("tr", null, ["Time", "Endpoint", "Request", "Verdict"].map((t) => h("th", { text: t })),
          h("th", { class: "num", text: "Status pri / cand" }), h("th", { class: "num", text: "ms pri / cand" }),
          h("th", { class: "num", text: "Diffs" }), h("th", { class: "num", text: "Noise" }),
          h("th", { text: "Candidate error" }))), tbody)
        : h("p", { class: "empty", text: "No exchanges match." }),
      more));
  }

  async function viewExchange(view, live, id) {
    setCrumbs({ label: "Exchanges", href: "#/exchanges" }, { label: id });
    const box = h("div", { id: "compare" });
    view.replaceChildren(box);
    await renderExchangeInto(box, id, null, live);
  }

  // ------------------------------------------------------------------ JSON paths

  const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
  function keySeg(k) {
    return IDENT.test(k) ? "." + k : "['" + k.replace(/\\/g, "\\\\").replace(/'/g, "\\'") + "']";
  }

  function parseQuoted(s, i) {   // s[i] === "'" → [string, index after the closing quote]
    let out = "";
    for (let j = i + 1; j < s.length; j++) {
      const c = s[j];
      if (c === "\\" && j + 1 < s.length) { out += s[++j]; continue; }
      if (c === "'") return [out, j + 1];
      out += c;
    }
    return null;
  }

  /* "$.a['b c'][2][id=7][*]" → segments; null when it is not a JSONPath we render. */
  function parsePath(p) {
    if (!p || p[0] !== "$") return null;
    const segs = [];
    let i = 1;
    while (i < p.length) {
      if (p[i] === ".") {
        const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(p.slice(i + 1));
        if (!m) return null;
        segs.push({ k: "key", v: m[0] });
        i += 1 + m[0].length;
      } else if (p[i] === "[") {
        if (p[i + 1] === "'") {
          const q = parseQuoted(p, i + 1);
          if (!q || p[q[1]] !== "]") return null;
          segs.push({ k: "key", v: q[0] });
          i = q[1] + 1;
          continue;
        }
        let j = i + 1, inQ = false;
        for (; j < p.length; j++) {
          if (inQ) { if (p[j] === "\\") j++; else if (p[j] === "'") inQ = false; }
          else if (p[j] === "'") inQ = true;
          else if (p[j] === "]") break;
        }
        const body = p.slice(i + 1, j);
        i = j + 1;
        if (body === "*") segs.push({ k: "star" });
        else if (/^\d+$/.test(body)) segs.push({ k: "idx", v: +body });
        else {
          const eq = body.indexOf("=");
          if (eq < 0) return null;
          const raw = body.slice(eq + 1);
          let value;
          if (raw[0] === "'") { const q = parseQuoted(raw, 0); value = q ? q[0] : raw; }
          else { try { value = JSON.parse(raw); } catch (e) { value = raw; } }
          segs.push({ k: "sel", name: body.slice(0, eq), v: value });
        }
      } else return null;
    }
    return segs;
  }

  function same(a, b) {
    if (a === b) return true;
    if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
    if (Array.isArray(a) !== Array.isArray(b)) return false;
    const ka = Object.keys(a), kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && same(a[k], b[k]));
  }

  /* Where does a difference's path land in this document? →
     {path} (an element to mark) or {parent, label} (absent here: mark its parent). */
  function resolve(doc, segs, value) {
    let cur = doc, path = "$";
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i], last = i === segs.length - 1;
      const isObj = cur !== null && typeof cur === "object" && !Array.isArray(cur);
      if (s.k === "key") {
        if (!isObj || !Object.prototype.hasOwnProperty.call(cur, s.v)) return { parent: path, label: JSON.stringify(s.v) };
        path += keySeg(s.v); cur = cur[s.v];
      } else if (s.k === "idx") {
        if (!Array.isArray(cur) || s.v >= cur.length) return { parent: path, label: `[${s.v}]` };
        path += `[${s.v}]`; cur = cur[s.v];
      } else if (s.k === "sel") {
        const idx = Array.isArray(cur) ? cur.findIndex((e) => e !== null && typeof e === "object" && same(e[s.name], s.v)) : -1;
        if (idx < 0) return { parent: path, label: `[${s.name}=${JSON.stringify(s.v)}]` };
        path += `[${idx}]`; cur = cur[idx];
      } else {   // [*]: an element of an unordered array; find it by value when we can
        if (!Array.isArray(cur)) return { parent: path, label: "[*]" };
        if (!last || value === null || value === undefined) return { path };
        const idx = cur.findIndex((e) => same(e, value));
        if (idx < 0) return { path };
        path += `[${idx}]`; cur = cur[idx];
      }
    }
    return { path };
  }

  // ------------------------------------------------------------------ rendering bodies

  function scalarSpan(v) {
    if (v === null) return h("span", { class: "jnull", text: "null" });
    switch (typeof v) {
      case "string": return h("span", { class: "js", text: JSON.stringify(v) });
      case "number": return h("span", { class: "jnum", text: String(v) });
      case "boolean": return h("span", { class: "jb", text: String(v) });
      default: return h("span", { text: String(v) });
    }
  }

  const MAX_NODES = 6000;
  /* A pretty-printed JSON tree; every element remembers its JSONPath (in the
     comparator's notation) so differences can be marked. */
  function renderJson(value) {
    const nodes = new Map();
    let count = 0;
    const root = h("div", { class: "json" });
    function node(v, path, label, last) {
      count++;
      const comma = last ? "" : ",";
      if (v !== null && typeof v === "object" && count <= MAX_NODES) {
        const arr = Array.isArray(v);
        const keys = arr ? v.map((_, i) => i) : Object.keys(v);
        const wrap = h("div", { class: "jn" });
        nodes.set(path, wrap);
        const [o, c] = arr ? ["[", "]"] : ["{", "}"];
        const open = h("div", { class: "jl" }, label, h("span", { class: "jp", text: o }));
        if (!keys.length) { open.append(h("span", { class: "jp", text: c }), comma); wrap.append(open); return wrap; }
        open.classList.add("jtoggle");
        open.title = "click to fold";
        open.addEventListener("click", () => wrap.classList.toggle("collapsed"));
        const kids = h("div", { class: "jc" });
        keys.forEach((k, i) => {
          const p = arr ? `${path}[${k}]` : path + keySeg(k);
          const lab = arr ? null : [h("span", { class: "jk", text: JSON.stringify(k) }), ": "];
          kids.append(node(v[k], p, lab, i === keys.length - 1));
        });
        wrap.append(open, kids, h("div", { class: "jl" }, h("span", { class: "jp", text: c }), comma));
        return wrap;
      }
      const line = h("div", { class: "jl" }, label,
        count > MAX_NODES && v !== null && typeof v === "object" ? h("span", { class: "muted", text: "… (not shown)" }) : scalarSpan(v),
        comma);
      nodes.set(path, line);
      return line;
    }
    root.append(node(value, "$", null, true));
    return { el: root, nodes };
  }

  function renderText(text) {
    const lines = text.split("\n");
    const nodes = new Map();
    const root = h("div", { class: "text" });
    lines.slice(0, 5000).forEach((l, i) => {
      const el = h("div", { class: "tl" }, h("span", { class: "ln", text: i + 1 }), h("span", { text: l }));
      nodes.set(i + 1, el);
      root.append(el);
    });
    if (lines.length > 5000) root.append(h("div", { class: "note", text: `… ${lines.length - 5000} more lines` }));
    return { el: root, nodes };
  }

  function header(headers, name) {
    for (const [k, v] of headers || []) if (k.toLowerCase() === name) return v;
    return null;
  }

  /* One side's pane: status, headers, body; marks for the differences on this side.
     side: "a" (the first response of the differences) or "b" (the second). */
  function pane(who, r, diffs, side, focus) {
    const el = h("section", { class: "pane pane-" + who, dataset: { who } });
    if (!r) {
      el.append(h("header", null, h("span", { class: "who", text: who })), h("div", { class: "note", text: "no answer" }));
      return { el, marks: new Map() };
    }
    const marks = new Map();   // difference index → element
    const cls = (d) => (d.noise || who === "secondary" ? "mark-noise" : "mark-diff") + (focus && d.field === focus ? " mark-focus" : "");
    const status = h("span", { class: "status", text: r.status ? `${r.status} ${r.reason || ""}`.trim() : (r.error || "no response") });
    const head = h("header", null, h("span", { class: "who", text: who }), status,
      h("span", { class: "meta", text: `${ms(r.latency)} ms · ${fmtBytes(r.size)}` + (r.error ? ` · ${r.error}` : "") }));
    el.append(head);
    // headers
    let headerRows = new Map();
    if (r.headers) {
      const tbody = h("tbody");
      for (const [k, v] of r.headers) {
        const tr = h("tr", null, h("td", { text: k }), h("td", { text: v }));
        headerRows.set(k.toLowerCase(), tr);
        tbody.append(tr);
      }
      const det = h("details", null, h("summary", { text: `${r.headers.length} headers` }), h("table", { class: "headers" }, tbody));
      el.append(det);
      diffs.forEach((d, i) => {
        if (d.section !== "header") return;
        const name = d.path.replace(/^header\./, "");
        let tr = headerRows.get(name);
        if (!tr) {
          tr = h("tr", { class: "phantom" }, h("td", { text: name }), h("td", { text: "(absent here)" }));
          tbody.append(tr);
          headerRows.set(name, tr);
        }
        tr.className += " " + cls(d);
        det.open = true;
        marks.set(i, tr);
      });
    }
    diffs.forEach((d, i) => { if (d.section === "status") { status.className += " " + cls(d); marks.set(i, status); } });
    // body
    const bodyBox = h("div", { class: "body" });
    el.append(bodyBox);
    if (r.body === undefined) {
      bodyBox.append(h("div", { class: "note", text: "Body not kept: only the first exchanges of each field keep whole (redacted) bodies." }));
      return { el, marks };
    }
    if (r.body_encoding === "base64") {
      bodyBox.append(h("div", { class: "note", text: `Binary body (${fmtBytes(r.size)}), not shown.` }));
      return { el, marks };
    }
    const text = r.body || "";
    if (!text) { bodyBox.append(h("div", { class: "note", text: "(empty body)" })); return { el, marks }; }
    let parsed, isJson = false;
    const ctype = (header(r.headers, "content-type") || "").toLowerCase();
    if (ctype.includes("json") || /^\s*[[{]/.test(text)) {
      try { parsed = JSON.parse(text); isJson = true; } catch (e) { isJson = false; }
    }
    if (r.body_truncated) bodyBox.append(h("div", { class: "note", text: "Body cut at the store's sample limit." }));
    if (isJson) {
      const tree = renderJson(parsed);
      bodyBox.append(tree.el);
      diffs.forEach((d, i) => {
        if (d.section !== "body") return;
        const segs = parsePath(d.path);
        if (!segs) return;
        const res = resolve(parsed, segs, side === "a" ? d.a : d.b);
        if (res.path !== undefined) {
          const target = tree.nodes.get(res.path);
          if (target) { target.className += " " + cls(d); marks.set(i, target); }
          return;
        }
        const parent = tree.nodes.get(res.parent);
        if (!parent) return;
        const box = parent.querySelector(":scope > .jc") || parent;
        const ph = h("div", { class: "jl phantom " + cls(d), text: `${res.label}: (absent here)` });
        box.append(ph);
        marks.set(i, ph);
      });
    } else {
      const tv = renderText(text);
      bodyBox.append(tv.el);
      diffs.forEach((d, i) => {
        const m = d.section === "body" && /^body\.line\[(\d+)\]$/.exec(d.path);
        if (!m) return;
        const n = +m[1];
        const mine = (d.kind === "added") === (side === "b");
        if (!mine && d.kind !== "changed") return;
        const line = tv.nodes.get(n);
        if (line) { line.className += " " + cls(d); marks.set(i, line); }
      });
    }
    return { el, marks };
  }

  function shortValue(v) {
    if (v === null || v === undefined) return "–";
    return typeof v === "string" ? JSON.stringify(v) : JSON.stringify(v);
  }

  async function renderExchangeInto(box, id, focus, live) {
    box.replaceChildren(h("div", { class: "panel" }, h("p", { class: "muted", text: "Loading exchange…" })));
    let x;
    try { x = await api("exchanges/" + enc(id)); } catch (e) {
      if (live()) box.replaceChildren(h("div", { class: "panel" }, h("p", { class: "error", text: e.message })));
      return;
    }
    if (!live()) return;
    const req = x.request || {};
    const diffs = x.differences || [];
    const secDiffs = x.secondary_differences || [];
    const panel = h("div", { class: "panel", id: "exchange", dataset: { id: x.id } });
    panel.append(h("div", { class: "compare-head" },
      h("span", { class: "req", text: `${req.method || ""} ${req.path || ""}${req.query ? "?" + req.query : ""}` }),
      verdictBadge(x.verdict),
      h("span", { class: "muted", text: `${x.endpoint} · ${fmtTime(x.time)} · ${x.id}` +
        (x.instance ? ` · via ${x.instance}` : "") }),
      h("a", { href: "#/x/" + enc(x.id), text: "permalink" })));
    // differences table
    const panes = [];
    const showSecondary = !!x.secondary;
    const dt = h("tbody");
    diffs.forEach((d, i) => {
      const tr = h("tr", { class: "clickable" + (focus && d.field === focus ? " selected" : ""), dataset: { path: d.path } },
        h("td", { text: d.section }),
        h("td", { class: "path", text: d.path }),
        h("td", null, h("span", { class: "badge kind", text: d.kind })),
        h("td", { class: "v", text: shortValue(d.a), title: shortValue(d.a) }),
        h("td", { class: "v", text: shortValue(d.b), title: shortValue(d.b) }),
        h("td", null, d.noise ? h("span", { class: "badge noise", text: "noise" }) : h("span", { class: "badge real", text: "real" })));
      tr.addEventListener("click", () => {
        for (const p of panes) {
          const el = p.marks.get(i);
          if (!el) continue;
          el.scrollIntoView({ block: "center", behavior: "smooth" });
          el.classList.remove("flash"); void el.offsetWidth; el.classList.add("flash");
        }
      });
      dt.append(tr);
    });
    panel.append(h("h3", { text: diffs.length ? `${diffs.length} difference${diffs.length > 1 ? "s" : ""} (primary → candidate)` : "No differences" }));
    if (diffs.length) {
      panel.append(h("table", { class: "grid diffs", id: "differences" },
        h("thead", null, h("tr", null, ["Section", "Path", "Kind", "Primary", "Candidate", ""].map((t) => h("th", { text: t })))), dt));
    }
    if (!x.sampled) {
      panel.append(h("p", { class: "explain", text: "Only the first exchanges of each field keep whole (redacted) bodies; this one keeps its differences only." }));
    }
    panel.append(h("div", { class: "legend" },
      h("span", null, h("span", { class: "sw d" }), "real difference"),
      h("span", null, h("span", { class: "sw n" }), "noise (or secondary vs primary)"),
      focus ? h("span", null, h("span", { class: "sw f" }), "selected field") : null));
    const grid = h("div", { class: "panes " + (showSecondary ? "n3" : "n2") });
    const p1 = pane("primary", x.primary, diffs, "a", focus);
    const p2 = pane("candidate", x.candidate, diffs, "b", focus);
    panes.push(p1, p2);
    grid.append(p1.el, p2.el);
    if (showSecondary) {
      const p3 = pane("secondary", x.secondary, secDiffs, "b", focus);
      grid.append(p3.el);
    }
    panel.append(grid);
    if (x.detail) {
      panel.append(h("details", { class: "deepdiff", open: true }, h("summary", { text: "DeepDiff report (primary → candidate)" }),
        h("pre", { class: "detail", text: x.detail })));
    }
    if (x.secondary_detail) {
      panel.append(h("details", { class: "deepdiff" }, h("summary", { text: "DeepDiff report (primary → secondary)" }),
        h("pre", { class: "detail", text: x.secondary_detail })));
    }
    if (req.headers) {
      panel.append(h("details", null, h("summary", { text: "Request headers (redacted)" }),
        h("table", { class: "headers grid" }, h("tbody", null,
          req.headers.map(([k, v]) => h("tr", null, h("td", { class: "path", text: k }), h("td", { class: "path", text: v })))))));
    }
    box.replaceChildren(panel);
    const first = p2.marks.size ? [...p2.marks.values()].find((el) => el.classList.contains("mark-focus")) : null;
    if (first && focus) first.scrollIntoView({ block: "nearest" });
  }

  // ------------------------------------------------------------------ noise and config

  async function viewNoise(view, live) {
    setCrumbs({ label: "Noise" });
    const data = await api("noise" + (state.noiseAll ? "?all=1" : ""));
    if (!live()) return;
    const all = h("input", { type: "checkbox", id: "noise-all" });
    all.checked = state.noiseAll;
    all.addEventListener("change", () => { state.noiseAll = all.checked; route(); });
    const rows = data.noise.map((e) => h("tr", { class: e.noise ? "" : "dim" },
      h("td", null, h("a", { href: "#/e/" + enc(e.endpoint), text: e.endpoint })),
      h("td", { class: "path" }, h("a", { href: `#/e/${enc(e.endpoint)}/f/${enc(e.field)}`, text: e.field })),
      h("td", { class: "num", text: fmtInt(e.n) }),
      h("td", { class: "num", text: `${fmtInt(e.r)} (${pct(e.n ? e.r / e.n : 0)})` }),
      h("td", { class: "num", text: `${fmtInt(e.s)} (${pct(e.n ? e.s / e.n : 0)})` }),
      h("td", { class: "num", text: fmtP(e.p_value) }),
      h("td", null, e.noise ? h("span", { class: "badge noise", text: "noise" }) : h("span", { class: "badge real", text: "real" }),
        e.provisional ? h("span", { class: "badge prov", text: "provisional" }) : null),
      h("td", { text: fmtTime(e.decided_at) })));
    view.replaceChildren(h("div", { class: "panel" },
      h("div", { class: "toolbar" }, h("h2", { text: "Learned noise" }),
        h("label", null, all, " include fields judged real"),
        h("span", { class: "muted", text: `A field is noise when the candidate does not differ from the primary more often than the secondary does (one-sided test, α = ${data.alpha}; at least ${data.min_samples} exchanges).` })),
      rows.length ? h("table", { class: "grid", id: "noise" },
        h("thead", null, h("tr", null, h("th", { text: "Endpoint" }), h("th", { text: "Field" }),
          h("th", { class: "num", text: "N" }), h("th", { class: "num", text: "R cand≠pri" }),
          h("th", { class: "num", text: "S sec≠pri" }), h("th", { class: "num", text: "p" }),
          h("th", { text: "Decision" }), h("th", { text: "Decided" }))), h("tbody", null, rows))
        : h("p", { class: "empty", text: "Nothing learned yet (noise needs a secondary upstream)." })));
  }

  async function viewConfig(view, live) {
    setCrumbs({ label: "Config" });
    const cfg = await api("config");
    if (!live()) return;
    view.replaceChildren(h("div", { class: "panel" },
      h("h2", { text: "Running configuration" }),
      h("p", { class: "muted", text: "Secrets (the admin token, values of *_env variables, URL credentials, credential headers) are redacted." }),
      h("div", { class: "config", id: "config" }, renderJson(cfg).el)));
  }

  // ------------------------------------------------------------------ start

  async function start() {
    takeHashToken();
    const win = $("#window");
    win.value = state.window;
    win.addEventListener("change", () => {
      state.window = win.value;
      sessionStorage.setItem(WINDOW_KEY, win.value);
      route();
    });
    $("#refresh").addEventListener("click", () => { refreshStatus(); route(); });
    $("#mirror-enabled").addEventListener("change", (ev) => putMirror({ enabled: ev.target.checked }));
    $("#mirror-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const raw = $("#mirror-sample").value.trim();
      const v = Number(raw);
      if (raw === "" || !Number.isFinite(v) || v < 0 || v > 100) {
        toast("Sample: enter a percentage between 0 and 100.", true);
        return;
      }
      putMirror({ sample: v / 100 });
    });
    try {
      const hz = await fetch("healthz", { cache: "no-store" }).then((r) => r.json());
      state.authRequired = !!hz.auth;
    } catch (e) { /* the API calls will say what is wrong */ }
    window.addEventListener("hashchange", route);
    await refreshStatus();
    await route();
    setInterval(refreshStatus, 5000);
    document.documentElement.dataset.ready = "1";
  }

  start();
})();
