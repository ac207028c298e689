/// `GET /`: one self-contained page (no external assets: the boot network often has no internet).
/// It polls `/api/v1/nodes` every few seconds; clicking a node shows its timeline from
/// `/api/v1/nodes/MAC`. Hints come from the server (`StuckHints`), never duplicated here.
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
              --up:#16794c; --stuck:#b42318; --work:#175cd3; --idle:#98a2b3; }
      * { box-sizing: border-box; }
      body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
      header { display:flex; align-items:baseline; gap:16px; padding:14px 20px; background:var(--card); border-bottom:1px solid var(--line); }
      header h1 { font-size:17px; margin:0; }
      #summary { color:var(--muted); }
      #updated { margin-left:auto; color:var(--muted); font-size:12px; }
      main { padding:16px 20px; display:grid; grid-template-columns: minmax(0, 1fr); gap:16px; }
      main.with-detail { grid-template-columns: minmax(0, 2fr) minmax(320px, 1fr); }
      .card { background:var(--card); border:1px solid var(--line); border-radius:8px; overflow:hidden; }
      table { width:100%; border-collapse:collapse; }
      th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:top; white-space:nowrap; }
      th { font-size:12px; color:var(--muted); font-weight:600; background:#fafbfc; position:sticky; top:0; }
      tbody tr { cursor:pointer; }
      tbody tr:hover { background:#f2f4f7; }
      tbody tr.selected { background:#eef4ff; }
      td.last { width:100%; max-width:0; overflow:hidden; text-overflow:ellipsis; }
      td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12.5px; }
      tr.hintrow td { white-space:normal; color:var(--stuck); font-size:12.5px; padding-top:0; border-bottom:1px solid var(--line); }
      tr.stuckrow td { border-bottom:none; }
      .stage { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; color:#fff; background:var(--work); }
      .stage.up { background:var(--up); }
      .stage.unseen { background:var(--idle); }
      .stage.stuck, .stage.failed { background:var(--stuck); }
      .muted { color:var(--muted); }
      #detail h2 { font-size:15px; margin:0; padding:12px 14px; border-bottom:1px solid var(--line); display:flex; gap:10px; align-items:baseline; }
      #detail h2 button { margin-left:auto; border:none; background:none; font-size:18px; cursor:pointer; color:var(--muted); }
      #detail .facts { padding:10px 14px; color:var(--muted); border-bottom:1px solid var(--line); white-space:normal; }
      ol#events { list-style:none; margin:0; padding:0; max-height:70vh; overflow:auto; }
      ol#events li { display:grid; grid-template-columns: 70px 90px minmax(0,1fr); gap:8px; padding:5px 14px; border-bottom:1px solid var(--line); }
      ol#events li.boot { background:#f2f4f7; font-weight:600; grid-template-columns: 1fr; }
      ol#events li .what { white-space:normal; word-break:break-word; }
      ol#events li.bad .what { color:var(--stuck); }
      #error { display:none; padding:10px 20px; background:#fef3f2; color:var(--stuck); border-bottom:1px solid #fecdca; }
      .empty { padding:24px; color:var(--muted); text-align:center; }
    </style>
    </head>
    <body>
    <header><h1>imagebuild boot status</h1><span id="summary"></span><span id="updated"></span></header>
    <div id="error"></div>
    <main id="main">
      <section class="card">
        <table>
          <thead><tr><th>Host</th><th>MAC</th><th>IP</th><th>Stage</th><th>In stage</th><th>Last seen</th><th>Boot time</th><th>Last event</th></tr></thead>
          <tbody id="nodes"><tr><td colspan="8" class="empty">loading…</td></tr></tbody>
        </table>
      </section>
      <section class="card" id="detail" hidden></section>
    </main>
    <script>
    "use strict";
    const REFRESH_MS = 3000;
    let selected = null;

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
      s = Math.floor(s);
      if (s < 60) return s + "s";
      if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
      if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
      return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
    }
    function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour12: false }); }
    function stageBadge(n) {
      const cls = n.stuck ? "stuck" : n.stage;
      return el("span", { class: "stage " + cls }, n.stage + (n.stuck && n.stage !== "failed" ? " · stuck" : ""));
    }

    function renderNodes(data) {
      const body = document.getElementById("nodes");
      body.replaceChildren();
      if (data.nodes.length === 0) {
        body.append(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No nodes yet: none in nodes.yaml and none seen on the network.")));
      }
      for (const n of data.nodes) {
        const boot = n.bootSeconds != null ? duration(n.bootSeconds) : (n.bootElapsed != null ? duration(n.bootElapsed) + "…" : "–");
        const row = el("tr", { class: (n.mac === selected ? "selected " : "") + (n.hint ? "stuckrow" : ""), onclick: () => select(n.mac) },
          el("td", {}, n.hostname || el("span", { class: "muted" }, n.registered ? "–" : "unregistered")),
          el("td", { class: "mono" }, n.mac),
          el("td", { class: "mono" }, n.ip || "–"),
          el("td", {}, stageBadge(n)),
          el("td", {}, duration(n.secondsInStage)),
          el("td", {}, n.lastSeen != null ? duration(data.now - n.lastSeen) + " ago" : el("span", { class: "muted" }, "never")),
          el("td", {}, boot),
          el("td", { class: "muted last", title: n.lastEvent || "" }, n.lastEvent || ""));
        body.append(row);
        if (n.hint) {
          body.append(el("tr", { class: "hintrow", onclick: () => select(n.mac) }, el("td", { colspan: 8 }, "⚠ " + n.hint)));
        }
      }
      const counts = {};
      for (const n of data.nodes) counts[n.stage] = (counts[n.stage] || 0) + 1;
      const stuck = data.nodes.filter(n => n.stuck).length;
      document.getElementById("summary").textContent =
        data.nodes.length + " nodes · " + (counts.up || 0) + " up · " + stuck + " stuck";
      document.getElementById("updated").textContent = "updated " + clock(data.now);
    }

    async function refresh() {
      try {
        const response = await fetch("/api/v1/nodes", { cache: "no-store" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        renderNodes(await response.json());
        if (selected) await loadDetail(selected);
        document.getElementById("error").style.display = "none";
      } catch (e) {
        const box = document.getElementById("error");
        box.textContent = "Cannot reach the server (" + e.message + "); retrying.";
        box.style.display = "block";
      }
    }

    function select(mac) {
      selected = mac;
      history.replaceState(null, "", "#" + mac);
      for (const row of document.querySelectorAll("#nodes tr")) row.classList.remove("selected");
      loadDetail(mac);
    }

    async function loadDetail(mac) {
      // A MAC is hex and colons: safe in a path as it is.
      const response = await fetch("/api/v1/nodes/" + mac.replace(/[^0-9a-fA-F:-]/g, ""), { cache: "no-store" });
      if (!response.ok) return;
      const data = await response.json();
      const n = data.node;
      const detail = document.getElementById("detail");
      const close = el("button", { title: "close", onclick: () => { selected = null; history.replaceState(null, "", "#"); detail.hidden = true; document.getElementById("main").classList.remove("with-detail"); } }, "×");
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
        el("h2", {}, n.hostname || (n.registered ? "(no hostname)" : "unregistered"), el("span", { class: "mono muted" }, n.mac), stageBadge(n), close),
        el("div", { class: "facts" }, facts, n.hint ? el("div", { style: "color:var(--stuck);margin-top:4px" }, "⚠ " + n.hint) : null),
        list);
      detail.hidden = false;
      document.getElementById("main").classList.add("with-detail");
      for (const row of document.querySelectorAll("#nodes tr")) {
        if (row.children[1] && row.children[1].textContent === mac) row.classList.add("selected");
      }
    }

    // A node in the address (#52:54:00:77:00:01) opens its timeline: links and bookmarks work.
    if (location.hash.length > 1) selected = decodeURIComponent(location.hash.slice(1));
    refresh();
    setInterval(refresh, REFRESH_MS);
    </script>
    </body>
    </html>
    """#
}
