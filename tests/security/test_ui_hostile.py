"""faice ui against hostile run directories and hostile requests (issue 23).

Metric and parameter names and values, messages, log lines, output file names and batch ids
come from users' files and images: each page must show them as text (escaped), with a
Content-Security-Policy that forbids inline script and other hosts; a link left in outputs
is never followed; the loopback server answers only for its own host name (DNS
rebinding), and a server bound elsewhere needs its token.
"""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
from ui_helpers import chromium_available, new_browser, start_ui
from werkzeug.test import Client

from faice.agency.ui.local import TOKEN_COOKIE, LocalUI, is_loopback
from faice.agency.ui.web import CSP
from faice.pipeline.records import BatchState, FailureClass, new_batch_record
from faice.pipeline.rundir import RunDir

PAYLOAD = "<script>window.faiceHacked=1</script>"
ATTRIBUTE = '"><img src=x onerror="window.faiceHacked=2">'
SVG = "<svg onload=window.faiceHacked=3>"
HOSTILE_ID = "b\"'<i>x"  # a batch id a hostile run.json could hold (no slash: a path stays one name)
FILE_NAME = "<img src=x onerror=window.faiceHacked=4>.txt"  # a file name has no slash


def hostile_run(outdir: Path) -> None:
    parameters = {ATTRIBUTE: PAYLOAD, "lr": 0.1}
    metrics = {"objective": {"name": SVG, "goal": "max", "value": 0.9}, "final": {SVG: 0.9, PAYLOAD: 1.0},
               "series": {SVG: [[0, 0.1], [1, 0.9]], PAYLOAD: [[0, 1.0]]}}
    record = new_batch_record(HOSTILE_ID, 0, parameters, run_id="h", command=["x"], state=BatchState.SUCCEEDED)
    record.metrics = metrics
    run = RunDir(outdir)
    run.write_record(record)
    failed = new_batch_record("b-failed", 1, {ATTRIBUTE: "</pre>" + PAYLOAD, "lr": 1.0}, run_id="h", command=["x"],
                              failure_class=FailureClass.EXIT_CODE, message=SVG + PAYLOAD)
    run.write_record(failed)
    batch = run.batch(HOSTILE_ID)
    batch.stdout.write_text(f"</pre>{PAYLOAD}\n\x1b[31mred\x1b[0m {ATTRIBUTE}\n")
    outputs = batch.outputs
    outputs.mkdir()
    (outputs / FILE_NAME).write_text("hostile name\n")
    (outputs / "secret-link").symlink_to("/etc/passwd")
    (outputs / "dir-link").symlink_to("/etc")
    (outputs / "ok.txt").write_text("fine\n")
    run.write_run({"runId": "h", "source": PAYLOAD}, [record.entry(), failed.entry()])


@pytest.fixture
def client(tmp_path) -> Client:
    hostile_run(tmp_path / "runs" / "hostile")
    return Client(LocalUI([tmp_path / "runs"], host="127.0.0.1", port=80))  # the test client's Host: localhost


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parsed(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    return parser


def assert_inert(html: str) -> None:
    """No markup from the payloads: the only script is ui.js, no handler attribute, no
    element a payload names, and no svg but the charts."""
    tags = parsed(html)
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts == [{"src": scripts[0]["src"], "defer": None}] and scripts[0]["src"].endswith("/static/ui.js")
    handlers = [(tag, name) for tag, attrs in tags.tags for name in attrs if name.lower().startswith("on")]
    assert handlers == []
    assert not [tag for tag, _ in tags.tags if tag in ("img", "i", "iframe", "object", "embed")]
    svgs = [attrs for tag, attrs in tags.tags if tag == "svg"]
    assert all(attrs.get("class") == "chart" for attrs in svgs)
    assert {tag for tag, _ in tags.tags} & {"style"} == set()
    assert not [attrs for _, attrs in tags.tags if "style" in attrs]


def test_every_page_shows_hostile_text_as_text(client):
    pages = {
        "/": client.get("/"),
        "run": client.get("/runs/hostile/"),
        "run sorted": client.get("/runs/hostile/?sort=metric.%3Cscript%3Ewindow.faiceHacked%3D1%3C%2Fscript%3E&q=%3Cscript%3E"),
        "batch": client.get("/runs/hostile/batches/b%22%27%3Ci%3Ex/"),
        "failed": client.get("/runs/hostile/batches/b-failed/"),
    }
    for name, response in pages.items():
        assert response.status_code == 200, name
        html = response.get_data(as_text=True)
        assert_inert(html)
        text = "".join(parsed(html).text)
        if name != "/":
            assert PAYLOAD in text or SVG in text, name  # shown, as text
    batch = pages["batch"].get_data(as_text=True)
    text = "".join(parsed(batch).text)
    assert f"</pre>{PAYLOAD}" in text and ATTRIBUTE in text  # the log line, whole
    assert FILE_NAME in text and "ok.txt" in text
    assert "secret-link" not in text and "dir-link" not in text  # links are not outputs


def test_the_live_answers_are_json_not_markup(client):
    changes = client.get("/api/runs/hostile/changes?since=0")
    assert changes.mimetype == "application/json"
    assert any(r["message"] == SVG + PAYLOAD for r in changes.get_json()["rows"])
    log = client.get("/api/runs/hostile/batches/b%22%27%3Ci%3Ex/log/stdout")
    assert log.mimetype == "application/json" and PAYLOAD in log.get_json()["text"]


def test_every_answer_carries_the_strict_policy(client):
    for path in ("/", "/runs/hostile/", "/static/ui.js", "/static/ui.css", "/nope", "/runs/nope/",
                 "/api/runs/hostile/changes?since=0", "/runs/hostile/batches/b%22%27%3Ci%3Ex/outputs/ok.txt"):
        response = client.get(path)
        assert response.headers["Content-Security-Policy"] == CSP, path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["X-Frame-Options"] == "DENY", path
    assert "default-src 'none'" in CSP and "script-src 'self'" in CSP and "unsafe" not in CSP
    assert "'unsafe-inline'" not in CSP and "http" not in CSP  # no inline, no other host


def test_outputs_never_follow_links_or_leave_the_batch(client):
    base = "/runs/hostile/batches/b%22%27%3Ci%3Ex/outputs/"
    assert client.get(base + "ok.txt").get_data() == b"fine\n"
    for path in ("secret-link", "dir-link/passwd", "..%2Fresult.json", "../result.json", "%2E%2E/stdout.txt",
                 "ok.txt/..", ""):
        response = client.get(base + path)
        assert response.status_code == 404, path
        assert b"root:" not in response.get_data(), path
    download = client.get(base + "%3Cimg%20src%3Dx%20onerror%3Dwindow.faiceHacked%3D4%3E.txt")
    assert download.status_code == 200 and download.mimetype == "application/octet-stream"
    assert download.headers["Content-Disposition"].startswith("attachment")


def test_batch_ids_that_climb_out_are_not_found(client):
    for bid in ("..", "%2E%2E", "..%2F..%2Fetc", "nope"):
        assert client.get(f"/runs/hostile/batches/{bid}/").status_code == 404, bid
        assert client.get(f"/api/runs/hostile/batches/{bid}/log/stdout").status_code == 404, bid
    assert client.get("/runs/..%2F..%2Fetc/").status_code == 404
    assert client.get("/api/runs/hostile/batches/b-failed/log/..%2Fresult.json").status_code == 404


def test_the_pages_are_read_only(client):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client.open("/runs/hostile/", method=method).status_code == 405, method


def test_loopback_server_answers_only_for_its_own_host_names(client):
    assert client.get("/", headers={"Host": "127.0.0.1:80"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost"}).status_code == 200
    for host in ("evil.example:80", "evil.example", "127.0.0.1.evil.example", "127.0.0.1:9999"):
        response = client.get("/runs/hostile/", headers={"Host": host})
        assert response.status_code == 421, host
        assert b"hostile" not in response.get_data()


def test_a_server_bound_elsewhere_needs_its_token(tmp_path):
    hostile_run(tmp_path / "runs" / "hostile")
    token = "t0ken-" + os.urandom(8).hex()
    app = Client(LocalUI([tmp_path / "runs"], host="0.0.0.0", port=80, token=token))
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and is_loopback("127.0.0.1")
    assert is_loopback("::1") and is_loopback("localhost")
    for path in ("/", "/runs/hostile/", "/api/runs/hostile/changes?since=0", "/static/ui.js"):
        assert app.get(path).status_code == 401, path
    assert app.get("/?token=wrong").status_code == 401
    assert app.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    app.set_cookie(TOKEN_COOKIE, "wrong")
    assert app.get("/").status_code == 401
    entry = app.get(f"/runs/hostile/?token={token}")
    assert entry.status_code == 303 and entry.headers["Location"] == "/runs/hostile/"  # the token leaves the URL
    cookie = entry.headers["Set-Cookie"]
    assert f"{TOKEN_COOKIE}={token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert app.get("/runs/hostile/").status_code == 200  # the cookie from the redirect
    fresh = Client(LocalUI([tmp_path / "runs"], host="0.0.0.0", port=80, token=token))
    assert fresh.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_in_chromium_no_payload_runs(tmp_path):
    """The same hostile run in a real browser: nothing of the payloads executes."""
    if not chromium_available():
        pytest.skip("Chromium and chromium-driver missing (scripts/infra.sh up installs them)")
    hostile_run(tmp_path / "runs" / "hostile")
    server = start_ui(tmp_path / "ui.log", str(tmp_path / "runs"))
    browser = new_browser()
    try:
        for path in ("/", "/runs/hostile/", "/runs/hostile/batches/b%22%27%3Ci%3Ex/", "/runs/hostile/batches/b-failed/"):
            browser.get(server.origin + path)
            assert browser.execute_script("return window.faiceHacked === undefined;"), path
            assert browser.execute_script("return document.querySelectorAll('img, i, iframe').length") == 0, path
        assert PAYLOAD in browser.find_element("css selector", "pre.record").text  # shown, not run
        messages = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert messages == [], json.dumps(messages)
    finally:
        browser.quit()
        server.stop()
