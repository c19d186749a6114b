"""``faice ui DIR``: the pages and the live answers, over HTTP (the browser tests are in
test_ui_browser.py). A real server process over run directories written by the records API."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from ui_helpers import WINNER, eventually, finish_batches, make_run, start_ui, synthetic_run, winner_id

from faice.pipeline.records import BatchState
from faice.pipeline.rundir import RunDir


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    expected = make_run(root / "lr-sweep")
    synthetic_run(root / "group" / "small", 30)
    return root, expected


@pytest.fixture
def ui(runs, tmp_path):
    server = start_ui(tmp_path / "ui.log", str(runs[0]))
    yield server
    server.stop()


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-batch="([^"]+)"', html)


def test_runs_page_lists_every_run_with_state_counts_and_best(ui):
    page = ui.get("/")
    assert page.status_code == 200
    html = page.text
    assert 'href="/runs/lr-sweep/"' in html and 'href="/runs/small/"' in html  # two levels deep
    assert "8 succeeded" in html and "1 failed" in html and "1 pending" in html
    assert "val_accuracy (max)" in html
    assert "0.9126" in html  # the best objective of lr-sweep (tests/support/ranked_run.py's known winner)


def test_run_page_ranks_like_faice_results_and_marks_the_best(ui, runs):
    _, expected = runs
    html = ui.get("/runs/lr-sweep/").text
    ranked = rows(html)
    assert ranked[0] == winner_id(expected)
    best = re.search(r'<tr data-batch="([^"]+)" class="best">', html)
    assert best and best.group(1) == winner_id(expected) and "★ best" in html
    results = subprocess.run([sys.executable, "-m", "faice", "results", str(runs[0] / "lr-sweep"), "--format", "json"],
                             capture_output=True, text=True, check=True)
    assert ranked == [row["batch"] for row in json.loads(results.stdout)]  # the same ranking, the same code
    assert f"learning_rate={WINNER['learning_rate']}, batch_size={WINNER['batch_size']}" in html
    assert html.count("<svg") == 3  # learning curves + one scatter per parameter
    assert 'class="curve best"' in html and 'class="best-mark"' in html
    assert "exited with code 1" in html  # failures and their reasons


def test_the_table_sorts_filters_and_pages_on_the_server(ui):
    by_lr = rows(ui.get("/runs/lr-sweep/?sort=param.learning_rate&order=desc").text)
    assert set(by_lr[:2]) == {"b-failed000000", "b-pending00000"} and by_lr[-2:] in (
        ["b-000000000000", "b-000000000001"], ["b-000000000001", "b-000000000000"])  # 10 first, 0.001 last
    html = ui.get("/runs/lr-sweep/?sort=param.learning_rate&order=desc").text
    assert 'aria-sort="descending"' in html
    assert rows(ui.get("/runs/lr-sweep/?state=failed").text) == ["b-failed000000"]
    assert len(rows(ui.get("/runs/lr-sweep/?q=0.001").text)) == 2  # learning_rate 0.001, both batch sizes
    page2 = ui.get("/runs/small/?per=10&page=2").text
    assert len(rows(page2)) == 10 and "page 2 of 3" in page2
    assert ui.get("/runs/lr-sweep/?sort=nonsense&page=x&per=-5").status_code == 200  # bad values: defaults


def test_batch_page_record_streams_outputs_and_download(ui, runs):
    batch = winner_id(runs[1])
    html = ui.get(f"/runs/lr-sweep/batches/{batch}/").text
    assert "done learning_rate_used=0.1" in html  # stdout
    assert "training.csv" in html and "&#34;batchId&#34;" in html  # outputs; the record (escaped JSON)
    assert html.count("<svg") >= 2  # one chart per metric series
    download = ui.get(f"/runs/lr-sweep/batches/{batch}/outputs/training.csv")
    assert download.status_code == 200
    assert download.content == (RunDir(runs[0] / "lr-sweep").batch(batch).outputs / "training.csv").read_bytes()
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert "attachment" in download.headers["Content-Disposition"]


def test_log_follow_sends_only_what_was_appended(ui, runs):
    batch = winner_id(runs[1])
    stdout = RunDir(runs[0] / "lr-sweep").batch(batch).stdout
    first = ui.get(f"/api/runs/lr-sweep/batches/{batch}/log/stdout").json()
    assert first["text"] == stdout.read_text()
    with open(stdout, "ab") as handle:
        handle.write("epoch 5 ✓ half a character: ".encode() + "é".encode()[:1])
    second = ui.get(f"/api/runs/lr-sweep/batches/{batch}/log/stdout", params={"offset": first["offset"]}).json()
    assert second["text"] == "epoch 5 ✓ half a character: "  # the cut character waits for its second byte
    with open(stdout, "ab") as handle:
        handle.write("é".encode()[1:] + b"\n")
    third = ui.get(f"/api/runs/lr-sweep/batches/{batch}/log/stdout", params={"offset": second["offset"]}).json()
    assert third["text"] == "é\n"


def test_changes_name_only_the_batches_that_changed(ui, runs):
    outdir = runs[0] / "lr-sweep"
    start = ui.get("/api/runs/lr-sweep/changes", params={"since": 0}).json()
    assert start["state"] == "running" and start["live"]
    version = start["version"]
    assert ui.get("/api/runs/lr-sweep/changes", params={"since": version}).json()["rows"] == []
    run = RunDir(outdir).read_run()
    entries = run["batches"]
    pending = next(e for e in entries if e["state"] == "pending")
    pending["state"] = BatchState.RUNNING.value
    RunDir(outdir).write_run(run, entries, phase=None)
    changed = eventually(lambda: (answer := ui.get("/api/runs/lr-sweep/changes", params={"since": version}).json())["rows"]
                         and answer)
    assert [r["batch"] for r in changed["rows"]] == [pending["id"]] and changed["rows"][0]["state"] == "running"
    assert changed["version"] == version + 1
    assert ui.get("/api/runs/lr-sweep/changes", params={"since": -7}).json()["reload"] is True


def test_a_finished_run_says_succeeded_on_the_next_load(tmp_path):
    outdir = tmp_path / "runs" / "live"
    synthetic_run(outdir, 5, running=2)
    server = start_ui(tmp_path / "ui.log", str(tmp_path / "runs"))
    try:
        assert 'data-run-state>running<' in server.get("/runs/live/").text
        finish_batches(outdir, ["s-00000003", "s-00000004"])

        def finished() -> str:
            page = server.get("/runs/live/").text
            return page if "data-run-state>succeeded<" in page else ""

        html = eventually(finished)
        assert 'data-run-state>succeeded<' in html and "data-live" not in html  # no more polling
    finally:
        server.stop()


def test_unknown_runs_batches_and_files_are_not_found(ui):
    for path in ("/runs/nope/", "/runs/lr-sweep/batches/nope/", "/runs/lr-sweep/batches/b-000000000000/outputs/nope",
                 "/static/nope.js", "/runs/lr-sweep/batches/b-000000000000/log/stdout"):
        assert ui.get(path).status_code == 404, path


def test_ui_refuses_what_is_not_a_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "faice", "ui", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not a directory" in result.stderr and "Traceback" not in result.stderr


def test_a_search_shows_its_proposals(tmp_path):
    """sweep.search logs its trials as they are proposed and told (faice.pipeline.search); the
    run page lists them, newest first, and picks up a new proposal while the run goes."""
    from faice.pipeline.search import LOG_FILE, search_dir

    outdir = tmp_path / "runs" / "search"
    synthetic_run(outdir, 3, running=1)
    events = [{"event": "search", "algorithm": "tpe", "budget": 8}]
    for n in range(3):
        events.append({"event": "asked", "trial": n, "batch": f"s-{n:08d}", "origin": "sampler" if n else "startup",
                       "parameters": {"learning_rate": 0.01 * (n + 1)}})
        if n < 2:
            events.append({"event": "told", "trial": n, "state": "succeeded", "value": 0.5 + n / 10,
                           "sampler": "complete", "message": None})
    search_dir(outdir).mkdir()
    log = search_dir(outdir) / LOG_FILE
    log.write_text("".join(json.dumps(e) + "\n" for e in events[:5]))
    server = start_ui(tmp_path / "ui.log", str(tmp_path / "runs"))
    try:
        html = server.get("/runs/search/").text
        assert "Search proposals" in html and "2 trials proposed so far" in html and ">startup<" in html
        with open(log, "a") as handle:
            handle.write(json.dumps(events[5]) + "\n")
        RunDir(outdir).rebuild()  # the run record changes with each proposal
        html = eventually(lambda: (text := server.get("/runs/search/").text) and "3 trials proposed" in text and text)
        section = html[html.index("Search proposals"):]
        assert section.index("s-00000002</a>") < section.index("s-00000001</a>")  # newest first
    finally:
        server.stop()


def test_a_port_in_use_is_a_clear_error(ui, tmp_path):
    port = ui.origin.rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "faice", "ui", str(tmp_path), "--port", port],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot listen there" in result.stderr and "--port 0" in result.stderr
    assert "internal error" not in result.stderr


def test_tables_and_forms_are_described_for_screen_readers(ui, runs):
    """Each table has a caption, column headings with scope=col (the sortable ones aria-sort),
    each row a heading naming its batch; each form control a label; live regions for news."""
    from html.parser import HTMLParser

    class Structure(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack: list[str] = []
            self.tables: list[dict] = []
            self.labels: set[str] = set()
            self.controls: list[dict] = []
            self.live = False

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "table":
                self.tables.append({"caption": False, "col": [], "rows": 0, "row_headers": 0})
            elif tag == "caption" and self.tables:
                self.tables[-1]["caption"] = True
            elif tag == "th" and self.tables:
                if "thead" in self.stack:
                    self.tables[-1]["col"].append(attrs)
                elif attrs.get("scope") == "row":
                    self.tables[-1]["row_headers"] += 1
            elif tag == "tr" and "tbody" in self.stack:
                self.tables[-1]["rows"] += 1
            elif tag == "label":
                self.labels.add(attrs.get("for"))
            elif tag in ("input", "select") and attrs.get("type") != "hidden":
                self.controls.append(attrs)
            if attrs.get("aria-live"):
                self.live = True
            if tag not in ("input", "meta", "link", "br"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass

    for path in ("/", "/runs/lr-sweep/", f"/runs/lr-sweep/batches/{winner_id(runs[1])}/"):
        page = Structure()
        page.feed(ui.get(path).text)
        assert page.tables and page.live, path
        for table in page.tables:
            assert table["caption"], path
            assert table["col"] and all(th.get("scope") == "col" for th in table["col"]), path
            assert table["row_headers"] == table["rows"], path  # every row names its batch (or run, or file)
        assert all(c.get("id") in page.labels for c in page.controls), path
    results = Structure()
    results.feed(ui.get("/runs/lr-sweep/").text)
    sortable = results.tables[0]["col"]
    assert all("aria-sort" in th for th in sortable) and sum(th["aria-sort"] != "none" for th in sortable) == 1
