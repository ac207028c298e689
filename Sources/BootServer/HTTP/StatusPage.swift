/// `GET /`: one self-contained page (no external assets: the boot network often has no internet),
/// built for a boot storm of thousands of nodes.
///
/// It polls `/api/v1/nodes?since=CURSOR` every few seconds: the server answers with its summary (counts
/// per stage, stuck, failed, unregistered, and nodes per hint) and only the nodes that changed since the
/// last poll; the page keeps every node in memory and puts only the rows in view into the DOM (a
/// virtual table: some 40 rows whatever the node count). The counts are filters, as are the hint groups;
/// a search box narrows by hostname, MAC or IP; `?filter=…&q=…` in the address keeps both. Clicking a
/// node shows its timeline from `/api/v1/nodes/MAC`. Hints come from the server (`StuckHints`), never
/// duplicated here. After each poll the page writes its own cost into `<html data-…>` (bytes of the
/// answer, milliseconds from the answer to the updated rows, nodes held), which the headless-Chromium
/// test and `benchmarks/status-page.sh` read.
enum StatusPage {
    static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>imagebuild boot status</title>
    <style>
      :root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f7f8fa; --card:#fff;
              --up:#16794c; --stuck:#b42318; --work:#175cd3; --idle:#98a2b3; --sel:#eef4ff; }
      * { box-sizing: border-box; }
      html, body { height:100%; }
      body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg);
             display:flex; flex-direction:column; }
      header { display:flex; align-items:baseline; gap:16px; padding:12px 20px; background:var(--card); border-bottom:1px solid var(--line); }
      header h1 { font-size:17px; margin:0; }
      #summary { color:var(--muted); }
      #warnings { margin:12px 20px 0; padding:8px 12px; border:1px solid #fedf89; background:#fffaeb; color:#93370d; border-radius:8px; font-size:13px; }
      #updated { margin-left:auto; color:var(--muted); font-size:12px; }
      #error { display:none; padding:10px 20px; background:#fef3f2; color:var(--stuck); border-bottom:1px solid #fecdca; }
      .card { background:var(--card); border:1px solid var(--line); border-radius:8px; overflow:hidden; }
      #top { padding:14px 20px 0; display:grid; grid-template-columns: minmax(0, 1fr); gap:12px; }
      #bar { display:flex; height:10px; border-radius:5px; overflow:hidden; background:var(--line); margin:12px 14px 4px; }
      #bar span { display:block; height:100%; min-width:0; }
      #chips { display:flex; flex-wrap:wrap; gap:6px; padding:8px 14px 12px; }
      .chip { border:1px solid var(--line); background:var(--card); border-radius:14px; padding:2px 10px; font:inherit; font-size:12.5px;
              cursor:pointer; color:var(--fg); display:inline-flex; gap:6px; align-items:baseline; }
      .chip b { font-variant-numeric: tabular-nums; }
      .chip .dot { width:8px; height:8px; border-radius:4px; display:inline-block; align-self:center; }
      .chip.zero { color:var(--idle); }
      .chip.active { background:var(--sel); border-color:var(--work); }
      .chip.alarm b { color:var(--stuck); }
      .sep { width:1px; background:var(--line); margin:0 4px; }
      #hints h2 { font-size:13px; margin:0; padding:10px 14px 4px; color:var(--muted); font-weight:600; }
      #hints ul { list-style:none; margin:0; padding:0 6px 8px; max-height:150px; overflow:auto; }
      #hints li button { all:unset; box-sizing:border-box; display:grid; grid-template-columns: 84px 104px minmax(0,1fr); gap:10px; width:100%;
                         padding:3px 8px; border-radius:6px; cursor:pointer; white-space:normal; }
      #hints li .stage { white-space:nowrap; }
      #hints li button:hover { background:#f2f4f7; }
      #hints li button.active { background:var(--sel); }
      #hints .n { color:var(--stuck); font-weight:600; font-variant-numeric: tabular-nums; text-align:right; }
      main { flex:1; min-height:0; padding:12px 20px 16px; display:grid; grid-template-columns: minmax(0, 1fr); gap:16px; }
      main.with-detail { grid-template-columns: minmax(0, 2.4fr) minmax(300px, 1fr); }
      #list { display:flex; flex-direction:column; min-height:0; }
      .toolbar { display:flex; gap:10px; align-items:center; padding:8px 10px; border-bottom:1px solid var(--line); }
      .toolbar input { flex:0 1 320px; font:inherit; padding:4px 8px; border:1px solid var(--line); border-radius:6px; }
      #shown { color:var(--muted); font-size:12.5px; }
      #clear { margin-left:auto; border:none; background:none; color:var(--work); cursor:pointer; font:inherit; font-size:12.5px; }
      #scroller { flex:1; min-height:160px; overflow:auto; }
      table { width:100%; border-collapse:collapse; table-layout:fixed; }
      th, td { text-align:left; padding:0 10px; height:32px; border-bottom:1px solid var(--line); white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
      th { font-size:12px; color:var(--muted); font-weight:600; background:#fafbfc; position:sticky; top:0; z-index:1; }
      tbody tr { cursor:pointer; }
      tbody tr:hover { background:#f2f4f7; }
      tbody tr.selected { background:var(--sel); }
      tr.spacer td { height:auto; padding:0; border:none; }
      tr.spacer { cursor:default; }
      td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12.5px; }
      .stage { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; color:#fff; background:var(--work); }
      .stage.up { background:var(--up); }
      .stage.unseen { background:var(--idle); }
      .stage.stuck, .stage.failed { background:var(--stuck); }
      .muted { color:var(--muted); }
      .empty { padding:24px; color:var(--muted); text-align:center; white-space:normal; }
      #detail { display:flex; flex-direction:column; min-height:0; }
      #detail h2 { font-size:15px; margin:0; padding:12px 14px; border-bottom:1px solid var(--line); display:flex; gap:10px; align-items:baseline; }
      #detail h2 button { margin-left:auto; border:none; background:none; font-size:18px; cursor:pointer; color:var(--muted); }
      #detail .facts { padding:10px 14px; color:var(--muted); border-bottom:1px solid var(--line); white-space:normal; }
      ol#events { list-style:none; margin:0; padding:0; overflow:auto; flex:1; }
      ol#events li { display:grid; grid-template-columns: 70px 90px minmax(0,1fr); gap:8px; padding:5px 14px; border-bottom:1px solid var(--line); }
      ol#events li.boot { background:#f2f4f7; font-weight:600; grid-template-columns: 1fr; }
      ol#events li .what { white-space:normal; word-break:break-word; }
      ol#events li.bad .what { color:var(--stuck); }
    </style>
    </head>
    <body>
    <header><h1>imagebuild boot status</h1><span id="summary"></span><span id="updated"></span></header>
    <div id="error"></div>
    <div id="warnings" hidden></div>
    <div id="top">
      <section class="card" id="overview"><div id="bar"></div><div id="chips"></div></section>
      <section class="card" id="hints" hidden><h2>Why nodes are stuck (click to list them)</h2><ul id="hintlist"></ul></section>
      <section class="card" id="swarm" hidden><h2>Swarm (distribution: p2p)</h2><ul id="swarmlist"></ul></section>
    </div>
    <main id="main">
      <section class="card" id="list">
        <div class="toolbar">
          <input id="search" type="search" placeholder="Search hostname, MAC or IP" autocomplete="off">
          <span id="shown"></span><button id="clear" hidden>show all</button>
        </div>
        <div id="scroller">
          <table>
            <colgroup><col style="width:12%"><col style="width:152px"><col style="width:116px"><col style="width:146px">
                      <col style="width:80px"><col style="width:108px"><col style="width:100px"><col></colgroup>
            <thead><tr><th>Host</th><th>MAC</th><th>IP</th><th>Stage</th><th>In stage</th><th>Last seen</th><th>Boot time</th><th>Last event</th></tr></thead>
            <tbody id="nodes"><tr><td colspan="8" class="empty">loading…</td></tr></tbody>
          </table>
        </div>
      </section>
      <section class="card" id="detail" hidden></section>
    </main>
    <script>
    "use strict";
    const REFRESH_MS = 3000;
    const ROW_H = 32, OVERSCAN = 8;
    const COLORS = { unseen:"#98a2b3", dhcp:"#9e77ed", bootloader:"#7a5af8", config:"#6172f3", kernel:"#2e90fa", initrd:"#0ba5ec",
                     stage1:"#06aed4", image:"#15b79e", overlay:"#3ccb7f", "switch-root":"#66c61c", up:"#16794c", failed:"#b42318" };
    const $ = id => document.getElementById(id);

    const nodes = new Map();   // MAC -> node (one object per MAC, updated in place)
    let order = [];            // every node, sorted
    let view = [];             // the filtered, searched part of `order`
    let cursor = "", now = 0, summary = null, version = 0;
    let hintText = new Map();  // hint id -> text, from the summaries
    let selected = null;
    const params = new URLSearchParams(location.search);
    let filter = params.get("filter") || "all";
    let query = (params.get("q") || "").trim().toLowerCase();
    const perf = { refreshes: 0 };

    function el(tag, attrs, ...children) {
      const node = document.createElement(tag);
      for (const [k, v] of Object.entries(attrs || {})) {
        if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
      }
      for (const child of children) if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
      return node;
    }
    function duration(s) {
      if (s === null || s === undefined) return "–";
      s = Math.max(0, Math.floor(s));
      if (s < 60) return s + "s";
      if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
      if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
      return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
    }
    function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour12: false }); }
    function stageLabel(n) { return n.stage + (n.stuck && n.stage !== "failed" ? " · stuck" : ""); }
    function stageBadge(n) { return el("span", { class: "stage " + (n.stuck ? "stuck" : n.stage) }, stageLabel(n)); }

    // Stuck first (failed before slow), then hostname in natural order (node2 before node10), unnamed last, then MAC.
    function sortKey(n) {
      const rank = n.stuck ? (n.stage === "failed" ? "0" : "1") : "2";
      const name = n.hostname ? n.hostname.toLowerCase().replace(/\d+/g, d => d.padStart(12, "0")) : "\uffff";
      return rank + name + "\u0000" + n.mac;
    }
    const byKey = (a, b) => a._key < b._key ? -1 : a._key > b._key ? 1 : 0;

    function matches(n) {
      switch (filter) {
        case "all": break;
        case "stuck": if (!n.stuck || n.stage === "failed") return false; break;
        case "failed": if (n.stage !== "failed") return false; break;
        case "unregistered": if (n.registered) return false; break;
        default:
          if (filter.startsWith("stage:")) { if (n.stage !== filter.slice(6)) return false; }
          else if (filter.startsWith("hint:")) { if (n.hint !== Number(filter.slice(5))) return false; }
      }
      if (!query) return true;
      return n._text.includes(query);
    }

    // Applies one answer: changed nodes into the model; re-sorts only when a sort key changed.
    function apply(data) {
      now = data.now;
      cursor = data.cursor;
      let reorder = data.full;
      if (data.full) {
        nodes.clear(); hintText = new Map();
        for (const item of hintItems.values()) item.remove();
        hintItems.clear(); lastHints = "";
      }
      for (const r of data.nodes) {
        let n = nodes.get(r.mac);
        if (!n) { n = {}; nodes.set(r.mac, n); reorder = true; }
        n.mac = r.mac; n.hostname = r.hostname ?? null; n.ip = r.ip ?? null; n.registered = !!r.registered;
        n.stage = r.stage; n.since = r.since ?? null; n.lastSeen = r.lastSeen ?? null; n.boot = r.boot || 0;
        n.bootStarted = r.bootStarted ?? null; n.bootSeconds = r.bootSeconds ?? null; n.stuck = !!r.stuck;
        n.hint = r.hint ?? null; n.image = r.image ?? null; n.lastEvent = r.lastEvent ?? "";
        n._text = ((n.hostname || "") + " " + n.mac + " " + (n.ip || "")).toLowerCase();
        n._v = ++version;
        const key = sortKey(n);
        if (key !== n._key) { n._key = key; reorder = true; }
      }
      for (const mac of data.removed) if (nodes.delete(mac)) reorder = true;
      if (reorder) order = Array.from(nodes.values()).sort(byKey);
      if (reorder || data.nodes.length) refilter();
      summary = data.summary;
      for (const h of summary.hints) if (h.hint) hintText.set(h.id, h.hint);
      renderSummary();
      renderRows();
      if (selected && (data.full || data.nodes.some(r => r.mac === selected))) loadDetail(selected);
    }

    function refilter() {
      view = (filter === "all" && !query) ? order : order.filter(matches);
    }

    // ---- counts, bar, hint groups ----
    let chipsBuilt = false, lastHints = "";
    const hintItems = new Map();   // hint id -> its <li>
    function chip(key, label, color) {
      const b = el("button", { class: "chip", "data-filter": key, onclick: () => setFilter(filter === key ? "all" : key) },
                   color ? el("span", { class: "dot", style: "background:" + color }) : null, label, " ", el("b", {}, "0"));
      return b;
    }
    function renderSummary() {
      const s = summary;
      const chips = $("chips"), bar = $("bar");
      if (!chipsBuilt) {
        chips.append(chip("all", "all nodes"), chip("stuck", "stuck"), chip("failed", "failed"), chip("unregistered", "unregistered"),
                     el("span", { class: "sep" }));
        for (const { stage } of s.stages) {
          chips.append(chip("stage:" + stage, stage, COLORS[stage]));
          bar.append(el("span", { "data-stage": stage, style: "background:" + (COLORS[stage] || "#175cd3") }));
        }
        chipsBuilt = true;
      }
      const counts = { all: s.total, stuck: s.stuck, failed: s.failed, unregistered: s.unregistered };
      for (const { stage, count } of s.stages) counts["stage:" + stage] = count;
      for (const b of chips.querySelectorAll(".chip")) {
        const key = b.dataset.filter, n = counts[key] || 0, text = String(n);
        const value = b.querySelector("b");
        setText(value, text);
        b.classList.toggle("zero", n === 0 && key !== "all");
        b.classList.toggle("alarm", n > 0 && (key === "stuck" || key === "failed"));
        b.classList.toggle("active", key === filter);
      }
      for (const seg of bar.children) {
        const n = counts["stage:" + seg.dataset.stage] || 0;
        seg.style.flexGrow = String(n);
        seg.title = seg.dataset.stage + ": " + n;
      }
      const up = counts["stage:up"] || 0;
      setText($("summary"), s.total + " nodes · " + up + " up · " + s.stuck + " stuck · " + s.failed + " failed");
      setText($("updated"), "updated " + clock(now));
      // One item per hint, kept across refreshes: counts change in place, items move when the order does.
      const list = $("hintlist");
      const order = s.hints.map(h => h.id).join(",");
      for (const h of s.hints) {
        let item = hintItems.get(h.id);
        if (!item) {
          const key = "hint:" + h.id;
          item = el("li", {}, el("button", { onclick: () => setFilter(filter === key ? "all" : key) },
            el("span", { class: "n" }),
            el("span", {}, el("span", { class: "stage " + (h.stage === "failed" ? "failed" : "stuck") }, h.stage)),
            el("span", {}, hintText.get(h.id) || "")));
          hintItems.set(h.id, item);
        }
        setText(item.querySelector(".n"), h.count + (h.count === 1 ? " node" : " nodes"));
        item.firstChild.classList.toggle("active", filter === "hint:" + h.id);
      }
      if (order !== lastHints) {
        lastHints = order;
        const shown = new Set(s.hints.map(h => h.id));
        for (const [id, item] of hintItems) if (!shown.has(id)) { item.remove(); hintItems.delete(id); }
        list.append(...s.hints.map(h => hintItems.get(h.id)));
        $("hints").hidden = s.hints.length === 0;
      }
    }

    // ---- the virtual table: only the rows in view are in the DOM ----
    const body = $("nodes"), scroller = $("scroller");
    const topPad = el("tr", { class: "spacer" }, el("td", { colspan: 8 }));
    const bottomPad = el("tr", { class: "spacer" }, el("td", { colspan: 8 }));
    const pool = [];
    let emptyRow = null;
    function makeRow() {
      const tr = document.createElement("tr");
      for (let i = 0; i < 8; i++) tr.append(document.createElement("td"));
      tr.children[1].className = "mono"; tr.children[2].className = "mono"; tr.children[7].className = "muted";
      tr.children[3].append(document.createElement("span"));
      return tr;
    }
    // Rewrites the cell's text node in place: no new node per refresh (10,000 rows or 40, the DOM stays put).
    function setText(cell, text) {
      const t = cell.firstChild;
      if (t && t.nodeType === 3 && !t.nextSibling) { if (t.data !== text) t.data = text; }
      else cell.textContent = text;
    }
    function fill(tr, n) {
      const c = tr.children;
      if (tr._n !== n || tr._v !== n._v) {
        tr._n = n; tr._v = n._v;
        setText(c[0], n.hostname || (n.registered ? "–" : "unregistered"));
        c[0].className = n.hostname ? "" : "muted";
        setText(c[1], n.mac);
        setText(c[2], n.ip || "–");
        const badge = c[3].firstChild;
        badge.className = "stage " + (n.stuck ? "stuck" : n.stage);
        setText(badge, stageLabel(n));
        c[3].title = n.hint !== null ? "⚠ " + (hintText.get(n.hint) || "") : "";
        setText(c[7], n.lastEvent); c[7].title = n.lastEvent;
      }
      tr.classList.toggle("selected", n.mac === selected);
      setText(c[4], n.since !== null ? duration(now - n.since) : "–");
      setText(c[5], n.lastSeen !== null ? duration(now - n.lastSeen) + " ago" : "never");
      setText(c[6], n.bootSeconds !== null ? duration(n.bootSeconds)
                  : (n.bootStarted !== null && n.stage !== "up" && n.stage !== "unseen") ? duration(now - n.bootStarted) + "…" : "–");
    }
    let frame = 0;
    function scheduleRows() { if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderRows(); }); }
    function renderRows() {
      const total = view.length;
      const headH = scroller.querySelector("thead").offsetHeight;
      const first = Math.max(0, Math.floor((scroller.scrollTop - headH) / ROW_H) - OVERSCAN);
      const last = Math.min(total, first + Math.ceil(scroller.clientHeight / ROW_H) + 2 * OVERSCAN);
      if (total === 0) {
        const text = nodes.size === 0 ? "No nodes yet: none in nodes.yaml and none seen on the network." : "No node matches.";
        if (!emptyRow) emptyRow = el("tr", {}, el("td", { colspan: 8, class: "empty" }));
        emptyRow.firstChild.textContent = text;
        if (body.firstChild !== emptyRow || body.children.length !== 1) body.replaceChildren(emptyRow);
      } else {
        if (body.firstChild !== topPad) { body.replaceChildren(topPad, bottomPad); pool.forEach(tr => { tr._n = null; }); }
        while (pool.length < last - first) pool.push(makeRow());
        topPad.firstChild.style.height = (first * ROW_H) + "px";
        bottomPad.firstChild.style.height = ((total - last) * ROW_H) + "px";
        let at = topPad;
        for (let k = 0; k < pool.length; k++) {
          const tr = pool[k];
          if (k < last - first) {
            fill(tr, view[first + k]);
            if (at.nextSibling !== tr) body.insertBefore(tr, at.nextSibling);
            at = tr;
          } else if (tr.parentNode) {
            tr.remove();
          }
        }
      }
      let shown = total === nodes.size ? total + " nodes" : total + " of " + nodes.size + " nodes";
      if (total > 0) {
        // The rows on screen (the DOM holds a few more either side).
        const top = Math.max(0, Math.floor((scroller.scrollTop - headH) / ROW_H));
        shown += " · rows " + Math.min(total, top + 1) + "–" + Math.min(total, top + Math.floor((scroller.clientHeight - headH) / ROW_H));
      }
      if (filter !== "all") shown += " · " + describe(filter);
      if (query) shown += " · matching “" + query + "”";
      setText($("shown"), shown);
      $("clear").hidden = filter === "all" && !query;
    }
    function describe(f) {
      if (f.startsWith("stage:")) return "stage " + f.slice(6);
      if (f.startsWith("hint:")) return "hint: " + (hintText.get(Number(f.slice(5))) || "?").split(":")[0];
      return f;
    }
    scroller.addEventListener("scroll", scheduleRows, { passive: true });
    window.addEventListener("resize", scheduleRows);
    body.addEventListener("click", e => { const tr = e.target.closest("tr"); if (tr && tr._n) select(tr._n.mac); });

    function saveLocation() {
      const p = new URLSearchParams();
      if (filter !== "all") p.set("filter", filter);
      if (query) p.set("q", query);
      const search = p.toString();
      history.replaceState(null, "", (search ? "?" + search : location.pathname) + (selected ? "#" + selected : ""));
    }
    function setFilter(f) {
      filter = f;
      saveLocation();
      refilter();
      scroller.scrollTop = 0;
      if (summary) renderSummary();
      renderRows();
    }
    let typing = 0;
    $("search").value = query;
    $("search").addEventListener("input", e => {
      clearTimeout(typing);
      typing = setTimeout(() => { query = e.target.value.trim().toLowerCase(); saveLocation(); refilter(); scroller.scrollTop = 0; renderRows(); }, 150);
    });
    $("clear").addEventListener("click", () => { query = ""; $("search").value = ""; setFilter("all"); });

    // ---- polling ----
    let timer = 0;
    async function refresh() {
      clearTimeout(timer);
      try {
        const response = await fetch("/api/v1/nodes?since=" + encodeURIComponent(cursor), { cache: "no-store" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        const text = await response.text();
        const started = performance.now();
        const data = JSON.parse(text);
        apply(data);
        const ms = performance.now() - started;
        perf.refreshes++;
        const d = document.documentElement.dataset;
        d.refreshes = perf.refreshes; d.bytes = text.length; d.changed = data.nodes.length; d.renderMs = ms.toFixed(1); d.nodes = nodes.size;
        performance.measure("status-refresh", { start: started, duration: ms });
        $("error").style.display = "none";
        refreshInventory();
        refreshSwarm();
      } catch (e) {
        const box = $("error");
        box.textContent = "Cannot reach the server (" + e.message + "); retrying.";
        box.style.display = "block";
      }
      timer = setTimeout(refresh, REFRESH_MS);
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

    // ---- the inventory's state: a rejected nodes.yaml, or one newer than the published root ----
    let inventoryAt = 0;
    async function refreshInventory() {
      if (Date.now() - inventoryAt < 10000) return;  // a few hundred bytes, every 10 s is enough
      inventoryAt = Date.now();
      try {
        const response = await fetch("/api/v1/inventory", { cache: "no-store" });
        if (!response.ok) return;
        const s = await response.json();
        const lines = [];
        if (s.rejected) lines.push("nodes.yaml rejected at " + s.rejected + " (the previous inventory is in force)");
        const p = s.published;
        if (p && p.added.length + p.removed.length + p.changed.length > 0) {
          const parts = [];
          if (p.added.length) parts.push(p.added.length + " added");
          if (p.removed.length) parts.push(p.removed.length + " removed");
          if (p.changed.length) parts.push(p.changed.length + " changed");
          lines.push("nodes.yaml is newer than published generation " + p.generation + " (" + parts.join(", ")
                     + "): run imagebuild publish to write their boot files");
        }
        const box = $("warnings");
        box.replaceChildren(...lines.map(t => el("div", {}, t)));
        box.hidden = lines.length === 0;
      } catch (e) { /* the node poll reports an unreachable server */ }
    }

    // ---- the swarm: seeders and downloaders per published image, what nodes sent each other ----
    let swarmAt = 0;
    async function refreshSwarm() {
      if (Date.now() - swarmAt < 5000) return;
      swarmAt = Date.now();
      try {
        const response = await fetch("/api/v1/swarm", { cache: "no-store" });
        if (!response.ok) return;
        const s = await response.json();
        const mib = b => (b / 1048576).toFixed(0) + " MiB";
        $("swarmlist").replaceChildren(...s.images.map(i => el("li", {},
          el("span", { class: "mono" }, i.name + " " + i.digest), " ",
          i.seeders + " seeding, " + i.downloaders + " fetching; nodes sent each other " + mib(i.uploaded))));
        $("swarm").hidden = s.images.length === 0;
      } catch (e) { /* the node poll reports an unreachable server */ }
    }

    // ---- one node's timeline ----
    function select(mac) {
      selected = mac;
      saveLocation();
      for (const tr of pool) if (tr._n) tr.classList.toggle("selected", tr._n.mac === mac);
      loadDetail(mac);
    }
    function closeDetail() {
      selected = null;
      saveLocation();
      $("detail").hidden = true;
      $("main").classList.remove("with-detail");
      for (const tr of pool) tr.classList.remove("selected");
      scheduleRows();
    }
    async function loadDetail(mac) {
      // A MAC is hex and colons: safe in a path as it is.
      const response = await fetch("/api/v1/nodes/" + mac.replace(/[^0-9a-fA-F:-]/g, ""), { cache: "no-store" });
      if (!response.ok || selected !== mac) return;
      const data = await response.json();
      const n = data.node;
      const detail = $("detail");
      const facts = [n.ip ? "IP " + n.ip : null, n.image ? "image " + n.image : null, "boot #" + n.boot,
                     n.bootSeconds != null ? "booted in " + duration(n.bootSeconds) : null].filter(Boolean).join(" · ");
      const list = el("ol", { id: "events" });
      let boot = null;
      for (const e of data.events.slice().reverse()) {
        if (e.boot !== boot) {
          boot = e.boot;
          list.append(el("li", { class: "boot" }, "boot #" + boot));
        }
        const bad = e.outcome === "failed" || e.outcome === "refused" || e.step === "failed" || e.step === "nak";
        list.append(el("li", { class: bad ? "bad" : "" }, el("span", { class: "muted" }, clock(e.time)), el("span", {}, e.stage), el("span", { class: "what" }, e.summary || "")));
      }
      if (data.events.length === 0) list.append(el("li", { class: "boot" }, "no events yet"));
      detail.replaceChildren(
        el("h2", {}, n.hostname || (n.registered ? "(no hostname)" : "unregistered"), el("span", { class: "mono muted" }, n.mac), stageBadge(n),
           el("button", { title: "close", onclick: closeDetail }, "×")),
        el("div", { class: "facts" }, facts, n.hint ? el("div", { style: "color:var(--stuck);margin-top:4px" }, "⚠ " + n.hint) : null),
        list);
      const opening = detail.hidden;
      detail.hidden = false;
      $("main").classList.add("with-detail");
      if (opening) scheduleRows();
    }

    // A node in the address (#52:54:00:77:00:01) opens its timeline: links and bookmarks work.
    if (location.hash.length > 1) selected = decodeURIComponent(location.hash.slice(1));
    refresh();
    </script>
    </body>
    </html>
    """#
}
