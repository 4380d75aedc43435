"""The seed operator's live view of the scene: a web page that follows a snapshot of each invited cloud's state.

Whatever watches the federation (`python -m federation serve`) hands us a zero-argument callable returning the
current snapshot; this module only shows it: `GET /` the page, `GET /state` the snapshot as JSON, `GET /events`
the snapshot as server-sent events, sent at once and again whenever it changes, so the page never reloads.
The terminal shows the same snapshot with `federation.dashboard.scene_table`.

The snapshot (a JSON-serialisable dict):

    {
      "seed": "seed",                  # the seed stack's name
      "now": 1765000000.0,             # the server's epoch seconds when the snapshot was taken
      "service": "signing 3 members",  # one status line of the service
      "rows": [                        # one per invited cloud, in the order to show (up to ~16)
        {"stack": "canonical",
         "state": "building",          # one of STATES
         "phase": "servers",           # free text, may be "" (network, servers, kubernetes, cockroach, ...)
         "detail": "",                 # free text: why refused / the failure's line; may be long
         "started": 1764999950.0,      # epoch seconds the operator's up started, or None
         "ended": None,                # epoch seconds its pods were Ready (its up ended), or None
         "cluster": {"live": 1, "locality": "cloud=canonical,region=RegionOne,zone=nova"},
                                       # or None when the seed's SQL does not answer
        }, ...]
    }

A row's elapsed time is ended - started once it ended, now - started while it runs, and "-" before it started;
the page keeps it ticking between events with the snapshot's "now" as the server's clock.
"""

from __future__ import annotations

import html
import json
import socket
import threading
import time
from typing import Any, AsyncIterator, Callable, Optional

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

STATES = ("not started", "building", "waiting for signature", "signed", "joined", "failed", "refused")
POLL_SECONDS = 0.5
# A comment line now and then keeps proxies and the browser from taking a quiet stream for a dead one.
PING_SECONDS = 15.0

Snapshot = dict[str, Any]


def elapsed(row: Snapshot, now: float) -> Optional[float]:
    """Seconds the cloud's up took (or has taken so far); None before it started."""
    if row.get("started") is None:
        return None
    return (row["ended"] if row.get("ended") is not None else now) - row["started"]


def format_elapsed(seconds: Optional[float]) -> str:
    """42s, 3m05s, 1h02m: the page's JavaScript formats alike."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


def _content(snapshot: Snapshot) -> str:
    """What a change is judged on: the clock alone moving is no news (the page ticks elapsed by itself)."""
    return json.dumps({key: value for key, value in snapshot.items() if key != "now"}, sort_keys=True)


def _embedded_json(snapshot: Snapshot) -> str:
    """JSON safe inside <script>: a detail holding "</script>" cannot end the element."""
    return json.dumps(snapshot).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def create_app(read_snapshot: Callable[[], Snapshot], *,
               title: str = "crdb-federation: the scene") -> Starlette:
    """The page, the snapshot and its event stream. Setting `app.state.closing` (a threading.Event) ends the
    open event streams: uvicorn waits for open responses before it shuts down."""
    closing = threading.Event()

    def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_PAGE.replace("__TITLE__", html.escape(title)).replace("__STATES__", json.dumps(STATES))
                            .replace("__SNAPSHOT__", _embedded_json(read_snapshot())))

    def state(request: Request) -> JSONResponse:
        return JSONResponse(read_snapshot())

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            shown: Optional[str] = None
            last_write = time.monotonic()
            while not closing.is_set() and not await request.is_disconnected():
                # The producer may block (it may ask the seed's SQL): not on the event loop.
                snapshot = await anyio.to_thread.run_sync(read_snapshot, abandon_on_cancel=True)
                content = _content(snapshot)
                if content != shown:
                    retry = "retry: 2000\n" if shown is None else ""
                    yield f"{retry}data: {json.dumps(snapshot)}\n\n"
                    shown, last_write = content, time.monotonic()
                elif time.monotonic() - last_write >= PING_SECONDS:
                    yield ": ping\n\n"
                    last_write = time.monotonic()
                await anyio.sleep(POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app = Starlette(routes=[Route("/", page), Route("/state", state), Route("/events", events)])
    app.state.closing = closing
    return app


class DashboardServer:
    """The app under uvicorn in a background thread, so that a long-lived command can serve it beside its work.
    Loopback by default: the page shows the federation's state to whoever reaches it."""

    def __init__(self, read_snapshot: Callable[[], Snapshot], *, host: str = "127.0.0.1", port: int = 0,
                 title: str = "crdb-federation: the scene") -> None:
        self.app = create_app(read_snapshot, title=title)
        self.host = host
        # Bound here, so that a taken port fails in the caller and port 0's choice is known at once.
        self._socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", http="h11", ws="none",
            timeout_graceful_shutdown=3))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> "DashboardServer":
        """Returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Ends the open event streams first: else uvicorn would wait on them."""
        self.app.state.closing.set()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> "DashboardServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  :root { color-scheme: light; --line: #e3e6ea; --muted: #6b7280; }
  body { margin: 0; padding: 16px 24px; font: 14px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif;
         background: #f5f6f8; color: #111827; }
  header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 18px; margin-bottom: 12px; }
  h1 { font-size: 18px; margin: 0; }
  #service { color: #374151; }
  #counts { display: flex; flex-wrap: wrap; gap: 6px; }
  #link { margin-left: auto; font-size: 12px; color: #15803d; }
  #link.down { color: #b91c1c; font-weight: 600; }
  table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
  th { text-align: left; font-size: 12px; font-weight: 600; color: var(--muted); text-transform: uppercase;
       letter-spacing: .04em; padding: 7px 10px; border-bottom: 1px solid var(--line); background: #fafbfc; }
  td { padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
  tbody tr:nth-child(even) { background: #fbfcfd; }
  td.stack { font-weight: 600; white-space: nowrap; }
  td.elapsed { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  td.cluster { white-space: nowrap; }
  .locality { display: block; font: 12px ui-monospace, monospace; color: var(--muted); }
  .none { color: var(--muted); font-style: italic; }
  td.detail { font: 12px/1.35 ui-monospace, monospace; white-space: pre-wrap; overflow-wrap: anywhere;
              max-width: 46em; color: #374151; }
  tr[data-state="failed"] td.detail { color: #991b1b; }
  tr[data-state="refused"] td.detail { color: #86198f; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
           white-space: nowrap; background: #e5e7eb; color: #374151; }
  .badge[data-state="building"] { background: #dbeafe; color: #1e40af; }
  .badge[data-state="waiting for signature"] { background: #fef3c7; color: #92400e; }
  .badge[data-state="signed"] { background: #e0e7ff; color: #3730a3; }
  .badge[data-state="joined"] { background: #dcfce7; color: #166534; }
  .badge[data-state="failed"] { background: #fee2e2; color: #991b1b; }
  .badge[data-state="refused"] { background: #fae8ff; color: #86198f; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <span>seed <b id="seed"></b></span>
  <span id="service"></span>
  <span id="counts"></span>
  <span id="link">&#9679; live</span>
</header>
<table>
  <thead><tr>
    <th>cloud</th><th>state</th><th>phase</th><th>elapsed</th><th>cluster's view</th><th>detail</th>
  </tr></thead>
  <tbody id="rows"></tbody>
</table>
<script id="snapshot" type="application/json">__SNAPSHOT__</script>
<script>
"use strict";
const STATES = __STATES__;  // their order in the counts
let snapshot = JSON.parse(document.getElementById("snapshot").textContent);
let offset = 0;  // the server's clock minus this browser's, in seconds

// Text goes in through textContent only: a detail may hold markup.
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function badge(state, text) {
  const node = element("span", "badge", text);
  node.dataset.state = state;
  return node;
}

function formatElapsed(seconds) {  // as federation.web.format_elapsed
  if (seconds === null) return "-";
  const whole = Math.max(0, Math.floor(seconds));
  const pad = (n) => String(n).padStart(2, "0");
  if (whole < 60) return whole + "s";
  if (whole < 3600) return Math.floor(whole / 60) + "m" + pad(whole % 60) + "s";
  return Math.floor(whole / 3600) + "h" + pad(Math.floor(whole / 60) % 60) + "m";
}

function elapsed(row) {
  if (row.started === null || row.started === undefined) return null;
  const end = (row.ended === null || row.ended === undefined) ? Date.now() / 1000 + offset : row.ended;
  return end - row.started;
}

function tick() {
  const cells = document.querySelectorAll("#rows td.elapsed");
  snapshot.rows.forEach((row, i) => { if (cells[i]) cells[i].textContent = formatElapsed(elapsed(row)); });
}

function render(next) {
  snapshot = next;
  offset = next.now - Date.now() / 1000;
  document.getElementById("seed").textContent = next.seed;
  document.getElementById("service").textContent = next.service;
  const tally = new Map();
  for (const row of next.rows) tally.set(row.state, (tally.get(row.state) || 0) + 1);
  const order = [...STATES, ...[...tally.keys()].filter((s) => !STATES.includes(s))];
  const counts = document.getElementById("counts");
  counts.replaceChildren(...order.filter((s) => tally.has(s)).map((s) => badge(s, tally.get(s) + " " + s)));
  const heading = document.querySelector("h1").textContent;
  document.title = (tally.get("joined") || 0) + "/" + next.rows.length + " joined · " + heading;
  const body = document.getElementById("rows");
  body.replaceChildren(...next.rows.map((row) => {
    const tr = element("tr");
    tr.dataset.stack = row.stack;
    tr.dataset.state = row.state;
    const state = element("td");
    state.append(badge(row.state, row.state));
    const cluster = element("td", "cluster");
    if (row.cluster) {
      cluster.append(row.cluster.live + " live", element("span", "locality", row.cluster.locality || "-"));
    } else {
      cluster.append(element("span", "none", "SQL not answering"));
    }
    tr.append(element("td", "stack", row.stack), state, element("td", "phase", row.phase || "-"),
              element("td", "elapsed"), cluster, element("td", "detail", row.detail || ""));
    return tr;
  }));
  tick();
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("/events");
  source.onmessage = (event) => {
    link.textContent = "\u25cf live";
    link.className = "";
    render(JSON.parse(event.data));
  };
  source.onerror = () => {
    link.textContent = "\u25cf disconnected, retrying";
    link.className = "down";
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);  // the browser gave up: retry
  };
}

render(snapshot);
setInterval(tick, 1000);
connect();
</script>
</body>
</html>
"""
