"""The seed operator's live view of the scene (federation/web.py) and its terminal table: the page, its JSON and
its event stream under Starlette's TestClient, then the page live in headless Chromium (tests/browser.py)."""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any, Iterator, Optional

import httpx2
from rich.console import Console
from starlette.testclient import TestClient

from federation.dashboard import scene_table
from federation.web import STATES, DashboardServer, create_app
from tests.browser import Browser

MARKUP = "<script>alert('owned')</script> is not in the seed's members & never was"
LONG_FAILURE = ("error: openstack:compute:Instance (server-2): Error waiting for instance to become ready: "
                "unexpected state 'ERROR', wanted target 'ACTIVE'. last error: No valid host was found. "
                "There are not enough hosts available.")


class Scene:
    """A snapshot that the test changes while a stream or a page watches it; the clock moves on each read."""

    def __init__(self) -> None:
        start = time.time() - 600
        states = ["joined"] * 4 + ["building"] * 3 + ["waiting for signature"] * 2 + ["signed"] + \
                 ["not started"] * 3 + ["failed"] * 2 + ["refused"]
        clouds = ["canonical", "vexxhost", "otc", "ovh", "cleura", "citycloud", "infomaniak", "ionos", "sys11",
                  "plusserver", "noris", "wavecon", "regio", "gonicus", "pco", "artcodix"]
        rows = []
        for index, (stack, state) in enumerate(zip(clouds, states)):
            started = None if state == "not started" else start + 20 * index
            rows.append({
                "stack": stack, "state": state,
                "phase": {"building": "servers", "joined": "cockroach", "failed": "servers"}.get(state, ""),
                "detail": {"failed": LONG_FAILURE, "refused": MARKUP}.get(state, ""),
                "started": started, "ended": started + 300 if state == "joined" else None,
                "cluster": {"live": 3, "locality": f"cloud={stack},region=RegionOne,zone=nova"}
                if state == "joined" else None})
        self._snapshot = {"seed": "seed", "now": time.time(), "service": "signing 3 members (seed up 12 s so far)",
                          "rows": rows}
        self._lock = threading.Lock()
        self.reads = 0

    def __call__(self) -> dict:
        with self._lock:
            self.reads += 1
            self._snapshot["now"] = time.time()
            return copy.deepcopy(self._snapshot)

    def change(self, stack: str, **fields: Any) -> dict:
        """Changes one row; returns the snapshot as changed."""
        with self._lock:
            next(row for row in self._snapshot["rows"] if row["stack"] == stack).update(fields)
        return self()


def without_clock(snapshot: Optional[dict]) -> Optional[dict]:
    return snapshot and {key: value for key, value in snapshot.items() if key != "now"}


def data_events(lines: Iterator[str]) -> Iterator[dict]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


def test_page_is_self_contained_html_that_follows_the_event_stream():
    scene = Scene()
    response = TestClient(create_app(scene)).get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "new EventSource(\"/events\")" in page and "disconnected, retrying" in page
    assert "<title>crdb-federation: the scene</title>" in page
    for column in ("cloud", "state", "phase", "elapsed", "cluster's view", "detail"):
        assert f"<th>{column}</th>" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page


def test_page_escapes_markup_from_the_snapshot():
    app = create_app(Scene(), title="<b>scene</b>")
    page = TestClient(app).get("/").text
    assert "<script>alert" not in page and "</script> is not" not in page
    assert "\\u003cscript\\u003ealert('owned')\\u003c/script\\u003e" in page
    assert "<title>&lt;b&gt;scene&lt;/b&gt;</title>" in page


def test_state_is_the_snapshot():
    scene = Scene()
    state = TestClient(create_app(scene)).get("/state").json()
    assert without_clock(state) == without_clock(scene())


def test_events_send_the_snapshot_at_once_then_each_change():
    scene = Scene()
    app = create_app(scene)
    # Ends the stream (and so the reading) whatever happens: a failing test must not hang.
    watchdog = threading.Timer(5, app.state.closing.set)
    watchdog.start()
    try:
        with TestClient(app) as client, client.stream("GET", "/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = data_events(response.iter_lines())
            first = next(events, None)
            assert without_clock(first) == without_clock(scene())
            changed = scene.change("cleura", state="joined", ended=time.time(),
                                   cluster={"live": 4, "locality": "cloud=cleura"})
            # The clock moved on every read in between: only the change makes the next event.
            assert without_clock(next(events, None)) == without_clock(changed)
            app.state.closing.set()
            assert next(events, None) is None
    finally:
        watchdog.cancel()
        app.state.closing.set()


def test_scene_table_shows_sixteen_rows():
    snapshot = Scene()()
    console = Console(record=True, width=160)
    console.print(scene_table(snapshot))
    text = console.export_text()
    assert "seed seed: signing 3 members (seed up 12 s so far)" in text
    lines = text.splitlines()
    for row in snapshot["rows"]:
        assert any(row["stack"] in line and row["state"] in line for line in lines), row["stack"]
    assert {row["state"] for row in snapshot["rows"]} == set(STATES)
    assert "5m00s" in text and "SQL not answering" in text and "3 live cloud=canonical" in text
    # Long details fold (at spaces) into their column, whole.
    details = "".join(line.split("│")[-2] for line in lines if line.count("│") == 7).replace(" ", "")
    assert details.count(LONG_FAILURE.replace(" ", "")) == 2 and MARKUP.replace(" ", "") in details


def test_server_stops_promptly_with_an_open_event_stream():
    with DashboardServer(Scene()) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/" and server.port > 0
        with httpx2.Client(timeout=5) as client, client.stream("GET", server.url + "events") as response:
            lines = response.iter_lines()
            assert next(data_events(lines))["seed"] == "seed"
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 3
            assert list(data_events(lines)) == []  # the stream ended, not the read's timeout


def test_event_stream_ends_when_its_client_leaves():
    scene = Scene()
    with DashboardServer(scene) as server:
        with httpx2.Client(timeout=5) as client, client.stream("GET", server.url + "events") as response:
            next(data_events(response.iter_lines()))
        time.sleep(0.6)  # a poll, for the server to notice
        reads = scene.reads
        time.sleep(1.1)
        assert scene.reads == reads, "the stream still polls the snapshot for a client that left"


def test_page_follows_the_scene_live_in_headless_chromium(tmp_path):
    scene = Scene()
    with DashboardServer(scene) as server, Browser(size=(1280, 860)) as browser:
        browser.open(server.url)
        browser.wait_for("document.querySelectorAll('#rows tr').length === 16")
        browser.evaluate("window.sameDocument = true")
        row = "document.querySelector('tr[data-stack=\"cleura\"]')"
        assert browser.evaluate(f"{row}.dataset.state") == "building"

        scene.change("cleura", state="joined", phase="cockroach", ended=time.time(),
                     cluster={"live": 5, "locality": "cloud=cleura,region=Kna1,zone=nova"})
        browser.wait_for(f"{row}.dataset.state === 'joined' && window.sameDocument === true", timeout=10)
        cells = browser.evaluate(f"[...{row}.cells].map((cell) => cell.innerText)")
        assert cells[:3] == ["cleura", "joined", "cockroach"] and "5 live" in cells[4]
        assert "5 joined" in browser.evaluate("document.getElementById('counts').innerText").splitlines()
        refused = browser.evaluate("document.querySelector('tr[data-state=\"refused\"] td.detail').innerText")
        assert refused == MARKUP
        assert browser.evaluate("document.querySelectorAll('td script').length") == 0
        # Elapsed ticks between events: a building cloud's keeps counting from the server's clock.
        ticking = "document.querySelector('tr[data-stack=\"citycloud\"] td.elapsed').innerText"
        before = browser.evaluate(ticking)
        browser.wait_for(f"{ticking} !== {json.dumps(before)}", timeout=3)
        shot = browser.screenshot(tmp_path / "scene.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        server.stop()
        browser.wait_for(["disconnected, retrying"], timeout=10)
