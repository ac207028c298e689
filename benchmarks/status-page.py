#!/usr/bin/env python3
"""Status page at boot-storm scale: test data, live churn, and a headless-Chromium measurement.

Standard library only (python3 and chromium from Debian). Used by benchmarks/status-page.sh and by
the end-to-end test `StatusPageTests` (Tests/EndToEndTests/StatusPageTests.swift).

  status-page.py fill DIR [--nodes 10000]
      Writes DIR/nodes.yaml (every registered node with an address in 127.1.0.0/16), DIR/root/ (a
      boot root) and DIR/state/timeline/timeline.jsonl: the journal a server left behind mid-storm, with nodes
      in every stage, some of them stuck, some failed, 1% not in nodes.yaml. `imagebuild serve
      --state-dir DIR/state` replays it on start. Prints what it wrote as JSON (counts by construction).

  status-page.py churn URL --dir DIR [--per-second 33] [--seconds 30]
      Sends stage reports (POST /api/v1/events) for random registered nodes, each from the node's own
      address (127.1.x.y: loopback accepts any 127/8 source), as the nodes themselves would.

  status-page.py measure URL --dir DIR [--refreshes 10] [--churn-per-second 33] [--label NAME]
      Opens URL in headless Chromium (DevTools protocol over --remote-debugging-pipe) and reports, per
      refresh of the page: bytes of the nodes answer on the wire, the refresh latency (request sent ->
      the frame after the page consumed the answer), the renderer's main-thread time per refresh cycle
      (DevTools Performance.getMetrics TaskDuration), and DOM node count. Churn runs meanwhile. Prints
      one JSON object with every sample and the medians.

Every loop here is bounded by a count and a deadline; everything talks to 127.0.0.0/8 only.
"""
import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

# ---------------------------------------------------------------- the storm's nodes


def node_mac(i):
    return "52:54:00:%02x:%02x:%02x" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)


def stray_mac(i):
    return "02:00:00:%02x:%02x:%02x" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)


def node_ip(i):
    return "127.1.%d.%d" % (i // 250, i % 250 + 1)


def node_name(i):
    return "node%05d" % (i + 1)


def counts_of(total):
    """Registered and unregistered nodes for a total: 1% are not in nodes.yaml."""
    strays = max(1, total // 100)
    return total - strays, strays


# Share of the registered nodes per stage (a storm part-way through), and stage thresholds (seconds,
# StuckHints.threshold) so a node can be placed safely before or after it.
MIX = [("unseen", 0.02), ("dhcp", 0.06), ("bootloader", 0.03), ("config", 0.04), ("kernel", 0.05), ("initrd", 0.06),
       ("stage1", 0.06), ("image", 0.12), ("switch-root", 0.03), ("up", 0.50), ("failed", 0.03)]
THRESHOLD = {"dhcp": 60, "bootloader": 90, "config": 90, "kernel": 180, "initrd": 300, "stage1": 180, "image": 900,
             "switch-root": 300}
FAILURES = ["verify: sha256 mismatch: expected 9f2c..., got 03b1... (corrupt or wrong image)",
            "network: no DHCP lease on any interface (udhcpc: no lease, failing)",
            "download: HTTP 404 for images/compute/image.tar.zst",
            "unpack: tmpfs full (no space left on device)"]


def stage_of(i, registered):
    """Deterministic stage for registered node i: the MIX shares, interleaved."""
    r = random.Random(i * 7919 + 17).random()
    acc = 0.0
    for stage, share in MIX:
        acc += share
        if r < acc:
            return stage
    return "up"


def history(stage, mac, ip, rng, now):
    """Journal events leading a node to `stage`, ending at a time that makes it stuck (or not)."""
    def dhcp(step, t, address=None):
        e = {"boot": 1, "kind": "dhcp", "mac": mac, "stage": "dhcp", "step": step, "time": round(t, 3)}
        if address:
            e["ip"] = address
        return e

    def transfer(proto, path, stage_name, t, size):
        return {"boot": 1, "bytes": size, "kind": "transfer", "mac": mac, "outcome": "completed", "path": path,
                "proto": proto, "size": size, "stage": stage_name, "time": round(t, 3)}

    def report(step, stage_name, t, detail=None):
        e = {"boot": 1, "kind": "report", "mac": mac, "stage": stage_name, "step": step, "time": round(t, 3)}
        if detail:
            e["detail"] = detail
        return e

    # When the last event happened: long enough ago to be stuck for 20% of the nodes mid-boot; recent
    # (0-10 s) for the rest, so none of them turns stuck within the next 50 s (the shortest limit is 60 s).
    if stage in THRESHOLD:
        stuck = rng.random() < 0.2
        last = now - (THRESHOLD[stage] + rng.uniform(30, 900)) if stuck else now - rng.uniform(0, 10)
    elif stage == "up":
        last = now - rng.uniform(5, 1200)
    else:
        last = now - rng.uniform(5, 600)
    steps = {
        "dhcp": lambda: [("dhcp", "discover")] + {0: [], 1: [("dhcp", "offer")], 2: [("dhcp", "ack")]}[rng.randrange(3)],
        "bootloader": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("tftp", "pxelinux.0", "bootloader")],
        "config": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("tftp", "pxelinux.0", "bootloader"),
                           ("tftp", "pxelinux.cfg/01-" + mac.replace(":", "-"), "config")],
        "kernel": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("http", "images/compute/vmlinuz", "kernel")],
        "initrd": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("http", "images/compute/vmlinuz", "kernel"),
                           ("http", "images/compute/initramfs.img", "initrd")],
        "stage1": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("http", "images/compute/initramfs.img", "initrd"),
                           ("report", "stage1-start", "stage1")],
        "image": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("report", "stage1-start", "stage1"),
                          ("report", "image-downloaded", "image")],
        "switch-root": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("report", "stage1-start", "stage1"),
                                ("report", "switch-root", "switch-root")],
        "up": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("report", "stage1-start", "stage1"), ("report", "up", "up")],
        "failed": lambda: [("dhcp", "discover"), ("dhcp", "ack"), ("report", "stage1-start", "stage1"),
                           ("report", "failed", "failed")],
    }[stage]()
    gaps = [rng.uniform(2, 40) for _ in steps]
    t = last - sum(gaps[1:])
    events = []
    for step, gap in zip(steps, [0] + gaps[1:]):
        t += gap
        kind = step[0]
        if kind == "dhcp":
            events.append(dhcp(step[1], t, ip if step[1] in ("offer", "ack") else None))
        elif kind in ("tftp", "http"):
            events.append(transfer(kind, step[1], step[2], t, 40_000_000 if "initramfs" in step[1] else 8_000_000))
        else:
            detail = rng.choice(FAILURES) if step[1] == "failed" else ("eth0 " + ip if step[1] == "stage1-start" else None)
            events.append(report(step[1], step[2], t, detail))
    return events


def fill(args):
    directory = os.path.abspath(args.dir)
    registered, strays = counts_of(args.nodes)
    os.makedirs(directory + "/root/images/compute", exist_ok=True)
    os.makedirs(directory + "/state/timeline", exist_ok=True)
    with open(directory + "/root/images/compute/vmlinuz", "wb") as f:
        f.write(b"k" * 4096)
    now = time.time()
    lines = []
    with open(directory + "/nodes.yaml", "w") as f:
        # No host keys: the page is what is measured, not 10,000 RSA keys made in the background.
        f.write("network:\n  server: 127.0.0.1\n  subnet: 127.0.0.0/8\n  http_port: %d\ndefaults:\n  image: compute\n  ssh_host_keys: none\nnodes:\n"
                % args.http_port)
        for i in range(registered):
            f.write('  - {mac: "%s", hostname: %s, ip: %s}\n' % (node_mac(i), node_name(i), node_ip(i)))
    made = {}
    for i in range(registered):
        stage = stage_of(i, True)
        made[stage] = made.get(stage, 0) + 1
        if stage != "unseen":
            lines += history(stage, node_mac(i), node_ip(i), random.Random(i), now)
    for i in range(strays):
        rng = random.Random(-i - 1)
        mac = stray_mac(i)
        # Not in nodes.yaml: DISCOVERs the server does not answer (stuck in dhcp), or the
        # "not registered" boot-script loop of an iPXE node with a pool address.
        if i % 3:
            lines.append({"boot": 1, "detail": "not in nodes.yaml, no pool", "kind": "dhcp", "mac": mac, "stage": "dhcp",
                          "step": "ignored", "time": round(now - rng.uniform(120, 600), 3)})
            made["dhcp"] = made.get("dhcp", 0) + 1
        else:
            lines.append({"boot": 1, "detail": "unknown MAC", "kind": "bootscript", "mac": mac, "stage": "config",
                          "time": round(now - rng.uniform(0, 10), 3)})
            made["config"] = made.get("config", 0) + 1
    lines.sort(key=lambda e: e["time"])
    with open(directory + "/state/timeline/timeline.jsonl", "w") as f:
        for e in lines:
            f.write(json.dumps(e, separators=(",", ":"), sort_keys=True) + "\n")
    print(json.dumps({"nodes": registered + strays, "registered": registered, "unregistered": strays,
                      "events": len(lines), "stages": made, "generated": now}))


# ---------------------------------------------------------------- live reports from the nodes' own addresses

NEXT = {"unseen": "stage1-start", "dhcp": "stage1-start", "bootloader": "stage1-start", "config": "stage1-start",
        "kernel": "stage1-start", "initrd": "stage1-start", "stage1": "image-downloaded", "image": "switch-root",
        "switch-root": "up", "up": "stage1-start", "failed": "stage1-start"}


def post_report(base, i, step, detail=None, timeout=5):
    """POST one report for registered node i from its own address; returns the HTTP status."""
    parsed = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout,
                                            source_address=(node_ip(i), 0))
    try:
        body = {"mac": node_mac(i), "stage": step}
        if detail:
            body["detail"] = detail
        connection.request("POST", "/api/v1/events", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class Churn(threading.Thread):
    """Moves random registered nodes on by one report each, `per_second` of them, until stopped."""

    def __init__(self, base, nodes, per_second, seconds):
        super().__init__(daemon=True)
        self.base, self.per_second, self.deadline = base, per_second, time.time() + seconds
        self.registered = counts_of(nodes)[0]
        self.stages = {i: stage_of(i, True) for i in range(self.registered)}
        self.stop_event = threading.Event()
        self.sent = self.refused = 0
        self.rng = random.Random(4242)

    def run(self):
        if self.per_second <= 0:
            return
        while not self.stop_event.is_set() and time.time() < self.deadline:
            tick = time.time()
            for _ in range(self.per_second):
                i = self.rng.randrange(self.registered)
                step = "failed" if self.rng.random() < 0.03 else NEXT[self.stages[i]]
                try:
                    status = post_report(self.base, i, step, "churn" if step == "failed" else None)
                except OSError:
                    status = 0
                if status == 202:
                    self.sent += 1
                    self.stages[i] = {"stage1-start": "stage1", "image-downloaded": "image", "switch-root": "switch-root",
                                      "up": "up", "failed": "failed"}[step]
                else:
                    self.refused += 1
            self.stop_event.wait(max(0.0, 1.0 - (time.time() - tick)))

    def stop(self):
        self.stop_event.set()
        self.join(timeout=10)


def churn(args):
    c = Churn(args.url, args.nodes, args.per_second, args.seconds)
    c.start()
    c.join(timeout=args.seconds + 30)
    c.stop()
    print(json.dumps({"sent": c.sent, "refused": c.refused}))
    return 0 if c.refused == 0 else 1


# ---------------------------------------------------------------- headless Chromium over the DevTools pipe

def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            path = os.path.join(directory, name)
            if os.access(path, os.X_OK):
                return path
    sys.exit("status-page.py: no Chromium (apt-get install chromium)")


class DevTools:
    """Chromium with --remote-debugging-pipe: JSON messages ending in NUL on fds 3 (to it) and 4 (from it)."""

    def __init__(self, width=1400, height=900):
        self.profile = tempfile.mkdtemp(prefix="ib-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def wire():
            # Through fresh descriptors first: either end may itself be 3 or 4.
            reader, writer = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(reader, 3)
            os.dup2(writer, 4)

        self.log = open(os.path.join(self.profile, "chrome.log"), "wb")
        self.process = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--user-data-dir=" + self.profile, "--window-size=%d,%d" % (width, height), "--no-first-run",
             "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-extensions",
             "--force-device-scale-factor=1", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, pass_fds=(3, 4), preexec_fn=wire)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            if time.time() > deadline:
                raise TimeoutError("no answer from Chromium")
            import select
            ready, _, _ = select.select([self.from_chrome], [], [], 0.5)
            if ready:
                chunk = os.read(self.from_chrome, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=True, timeout=60):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def pump(self, seconds):
        """Collects events for a while."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                reply = self._read_message(deadline)
            except TimeoutError:
                return
            if "method" in reply:
                self.events.append(reply)

    def attach(self):
        targets = self.call("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 session=False)["sessionId"]

    def evaluate(self, expression, timeout=60):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError("page script failed: %s" % result["exceptionDetails"])
        return result["result"].get("value")

    def metrics(self):
        return {m["name"]: m["value"] for m in self.call("Performance.getMetrics")["metrics"]}

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)
        self.log.close()
        subprocess.run(["rm", "-rf", self.profile])


# Installed before the page's own script: marks when the page asked for nodes, and when the frame after
# it consumed the answer (json() or text() resolved, then the page's synchronous render ran, then a
# frame was produced). Works the same for the old page and the new one.
PROBE = r"""
(() => {
  window.__refreshes = [];
  window.__firstRows = null;
  const isNodes = url => /\/api\/v1\/nodes(\?|$)/.test(url);
  const realFetch = window.fetch;
  window.fetch = function (input, init) {
    const url = typeof input === "string" ? input : input.url;
    if (!isNodes(url)) return realFetch.apply(this, arguments);
    const sample = { start: performance.now() };
    return realFetch.apply(this, arguments).then(response => {
      for (const method of ["json", "text"]) {
        const original = response[method].bind(response);
        response[method] = () => original().then(value => {
          sample.body = performance.now();
          requestAnimationFrame(() => setTimeout(() => { sample.rendered = performance.now(); window.__refreshes.push(sample); }, 0));
          return value;
        });
      }
      return response;
    });
  };
  const watch = () => {
    if (document.querySelector("#nodes td.mono")) { window.__firstRows = performance.now(); return; }
    requestAnimationFrame(watch);
  };
  requestAnimationFrame(watch);
})();
"""


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def measure(args):
    churner = None
    chrome = DevTools(*map(int, args.window.split("x")))
    requests = {}   # requestId -> {"order", "bytes"} for the nodes answers, in the order asked
    samples = []    # renderer metrics when each measured request was sent
    measuring = False

    def drain():
        batch, chrome.events = chrome.events, []
        for event in batch:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if "/api/v1/nodes" in url and "/api/v1/nodes/" not in url:
                    requests[params["requestId"]] = {"order": len(requests), "bytes": None, "sample": None}
                    if measuring:
                        m = chrome.metrics()
                        requests[params["requestId"]]["sample"] = len(samples)
                        samples.append({"taskMs": m["TaskDuration"] * 1000, "scriptMs": m["ScriptDuration"] * 1000,
                                        "layoutMs": (m["LayoutDuration"] + m["RecalcStyleDuration"]) * 1000,
                                        "domNodes": m["Nodes"], "heapMB": m["JSHeapUsedSize"] / 1e6, "bytes": None})
            elif method == "Network.loadingFinished" and params["requestId"] in requests:
                request = requests[params["requestId"]]
                request["bytes"] = params["encodedDataLength"]
                if request["sample"] is not None:
                    samples[request["sample"]]["bytes"] = params["encodedDataLength"]

    try:
        chrome.attach()
        for domain in ("Page", "Network", "Performance", "Runtime"):
            chrome.call(domain + ".enable")
        chrome.call("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
        started = time.time()
        chrome.call("Page.navigate", {"url": args.url})
        # The first rows on screen (bounded).
        first_rows = None
        while time.time() - started < args.timeout:
            first_rows = chrome.evaluate("window.__firstRows")
            if first_rows is not None:
                break
            chrome.pump(0.2)
            drain()
        if first_rows is None:
            raise SystemExit("status-page.py: no rows on the page within %d s" % args.timeout)
        # Let the first answer's work finish, then churn and sample refresh cycles: the main-thread time
        # between two requests the page sends is one refresh cycle.
        chrome.pump(1.0)
        drain()
        first_metrics = chrome.metrics()
        first_bytes = min(requests.values(), key=lambda r: r["order"])["bytes"] if requests else None
        if args.churn_per_second > 0:
            churner = Churn(args.api, args.nodes, args.churn_per_second, args.timeout)
            churner.start()
        measuring = True
        deadline = time.time() + args.timeout
        while len(samples) < args.refreshes + 1 and time.time() < deadline:
            chrome.pump(0.05)
            drain()
        chrome.pump(1.0)
        drain()
        refreshes = chrome.evaluate("window.__refreshes")
        page_marks = chrome.evaluate("({...document.documentElement.dataset})")
        cycles = []
        for a, b in zip(samples, samples[1:]):
            cycles.append({"bytes": a["bytes"], "mainThreadMs": round(b["taskMs"] - a["taskMs"], 1),
                           "scriptMs": round(b["scriptMs"] - a["scriptMs"], 1),
                           "styleLayoutMs": round(b["layoutMs"] - a["layoutMs"], 1), "domNodes": b["domNodes"],
                           "heapMB": round(b["heapMB"], 1)})
        # Refresh latencies after the first answer (that one is the page load).
        measured = [r for r in refreshes[1:] if "rendered" in r]
        latencies = [r["rendered"] - r["start"] for r in measured]
        consume = [r["rendered"] - r["body"] for r in measured]
        result = {
            "label": args.label, "url": args.url, "nodes": args.nodes, "churnPerSecond": args.churn_per_second,
            "firstLoad": {"rowsShownMs": round(first_rows, 1), "mainThreadMs": round(first_metrics["TaskDuration"] * 1000, 1),
                          "bytes": first_bytes, "domNodes": first_metrics["Nodes"]},
            "cycles": cycles, "latenciesMs": [round(x, 1) for x in latencies], "answerToFrameMs": [round(x, 1) for x in consume],
            "pageMarks": page_marks,
            "median": {"bytesPerRefresh": median([c["bytes"] for c in cycles]),
                       "mainThreadMsPerRefresh": median([c["mainThreadMs"] for c in cycles]),
                       "refreshLatencyMs": median(latencies), "answerToFrameMs": median(consume),
                       "domNodes": median([c["domNodes"] for c in cycles])},
        }
        if churner:
            churner.stop()
            result["churn"] = {"sent": churner.sent, "refused": churner.refused}
        if args.screenshot:
            import base64
            shot = chrome.call("Page.captureScreenshot", {"format": "png"})
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        print(json.dumps(result))
    finally:
        if churner:
            churner.stop()
        chrome.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fill")
    p.add_argument("dir")
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--http-port", type=int, default=18080)
    p = sub.add_parser("churn")
    p.add_argument("url")
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--per-second", type=int, default=33)
    p.add_argument("--seconds", type=float, default=30)
    p = sub.add_parser("measure")
    p.add_argument("url", help="the page, e.g. http://127.0.0.1:18080/")
    p.add_argument("--api", help="the server's base URL for churn (default: the page's origin)")
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--refreshes", type=int, default=10)
    p.add_argument("--churn-per-second", type=int, default=33)
    p.add_argument("--label", default="")
    p.add_argument("--window", default="1400x900")
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--screenshot")
    args = parser.parse_args()
    if args.command == "fill":
        fill(args)
    elif args.command == "churn":
        sys.exit(churn(args))
    else:
        if not args.api:
            parts = urllib.parse.urlsplit(args.url)
            args.api = "%s://%s" % (parts.scheme, parts.netloc)
        measure(args)


if __name__ == "__main__":
    main()
