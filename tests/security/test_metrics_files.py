"""A batch's metrics files are written by the (untrusted) program in the container: faice
reads them without leaving the batch's directories and without blocking."""

from __future__ import annotations

import os
import time

import pytest

from faice.pipeline.metrics import MetricsReader, MetricsSpec


def spec(*sources: dict) -> MetricsSpec:
    return MetricsSpec.from_mapping({"objective": {"name": "val_accuracy", "goal": "max"}, "sources": list(sources)})


def reader(tmp_path, *sources: dict) -> MetricsReader:
    return MetricsReader.for_batch(spec(*sources), outputs_dir=tmp_path)


def test_symlink_out_of_the_outputs_is_not_followed(tmp_path):
    secret = tmp_path / "host-secret.csv"
    secret.write_text("epoch,val_accuracy\n0,0.123\n")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "training.csv").symlink_to(secret)
    result = MetricsReader.for_batch(spec({"file": "training.csv"}), outputs_dir=outputs).finish()
    assert result["series"] == {} and result["objective"]["value"] is None
    assert any("outside its directory" in p["reason"] for p in result["problems"])


def test_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "training.csv")
    started = time.monotonic()
    result = reader(tmp_path, {"file": "training.csv"}).finish()
    assert time.monotonic() - started < 2
    assert any("not a regular file" in p["reason"] for p in result["problems"])


def test_input_values_cannot_lead_the_file_name_out_of_the_batch(tmp_path):
    """``$(inputs.NAME)`` is checked again after substitution: a value with .. is refused."""
    outputs = tmp_path / "b" / "outputs"
    outputs.mkdir(parents=True)
    (tmp_path / "b" / "x.csv").write_text("epoch,val_accuracy\n0,0.5\n")
    metrics = MetricsReader.for_batch(spec({"file": "$(inputs.name)"}), outputs_dir=outputs,
                                      inputs={"name": "../x.csv"})
    result = metrics.finish()
    assert result["objective"]["value"] is None
    assert any("'..' is not allowed" in p["reason"] for p in result["problems"])


@pytest.mark.foreign_records
def test_results_never_read_outside_the_run_for_hostile_batch_ids(tmp_path):
    """Batch ids come from run.json, which a remote node or agency may have written: an id
    like ../.. must not make ``faice results --red`` read metrics files outside batches/."""
    import json
    import subprocess
    import sys

    outside = tmp_path / "outputs"
    outside.mkdir()
    (outside / "training.csv").write_text("epoch,val_accuracy\n0,0.999\n")
    run = tmp_path / "run"
    (run / "batches").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"runId": "r", "batches": [
        {"id": "../..", "index": 0, "state": "succeeded", "parameters": {}},
        {"id": "..", "index": 1, "state": "succeeded", "parameters": {}}]}))
    red = tmp_path / "m.red.json"
    red.write_text(json.dumps({"metrics": {"objective": {"name": "val_accuracy", "goal": "max"},
                                           "sources": [{"file": "training.csv"}]}}))
    done = subprocess.run([sys.executable, "-m", "faice", "results", str(run), "--red", str(red), "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(row["objective"] is None for row in json.loads(done.stdout))


def test_a_directory_swapped_for_a_link_while_faice_reads(tmp_path):
    """Review 1.12: the container swaps ``d`` (a real directory) for a link to a host
    directory, again and again, while faice reads ``d/m.csv``: no host byte may ever reach
    the result (by path, the check and the open could see different ``d``s)."""
    import threading

    host = tmp_path / "host"
    host.mkdir()
    (host / "m.csv").write_text("SECRET_HEADER_a:b\nTOPSECRET-VALUE-1:2\n")
    outputs = tmp_path / "outputs"
    (outputs / "d").mkdir(parents=True)
    (outputs / "d" / "m.csv").write_text("val_accuracy:epoch\n0.5:1\n")
    os.symlink(host, outputs / "ds")
    stop = threading.Event()

    def swap() -> None:
        d, dd, ds = outputs / "d", outputs / "dd", outputs / "ds"
        while not stop.is_set():
            try:
                os.rename(d, dd)
                os.rename(ds, d)
                os.rename(d, ds)
                os.rename(dd, d)
            except OSError:
                pass

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    polls = leaks = 0
    deadline = time.monotonic() + 4
    try:
        while time.monotonic() < deadline:
            result = MetricsReader.for_batch(spec({"file": "d/m.csv", "separator": ":"}), outputs_dir=outputs).finish()
            polls += 1
            leaks += "SECRET" in repr(result) or "TOPSECRET" in repr(result)
    finally:
        stop.set()
        swapper.join()
    assert polls > 200
    assert leaks == 0, f"{leaks} of {polls} reads quoted the host file"


def test_links_that_stay_beneath_the_directory_are_read(tmp_path):
    (tmp_path / "run3").mkdir()
    (tmp_path / "run3" / "training.csv").write_text("epoch,val_accuracy\n0,0.7\n")
    (tmp_path / "latest").symlink_to("run3")
    (tmp_path / "alias.csv").symlink_to("latest/training.csv")
    (tmp_path / "up.csv").symlink_to("run3/../../outside.csv")
    (tmp_path.parent / "outside.csv").write_text("epoch,val_accuracy\n0,0.9\n")
    assert reader(tmp_path, {"file": "alias.csv"}).finish()["objective"]["value"] == 0.7
    result = reader(tmp_path, {"file": "up.csv"}).finish()
    assert result["objective"]["value"] is None
    assert any("outside its directory" in p["reason"] for p in result["problems"])


def test_a_status_file_rewritten_in_place_is_read_again(tmp_path):
    """Review 1.7: a program rewrites its status file each epoch (same inode, same size)."""
    metrics = MetricsReader.for_batch(MetricsSpec.from_mapping({
        "objective": {"name": "acc", "goal": "max", "scope": "best"},
        "sources": [{"file": "status.txt", "format": "keyvalue"}]}), outputs_dir=tmp_path)
    seen = []
    for epoch, acc in enumerate([0.5, 0.9, 0.7], 1):
        with open(tmp_path / "status.txt", "r+" if epoch > 1 else "w") as handle:  # the same inode
            handle.write(f"epoch={epoch} acc={acc:.3f}\n")
        seen.append(metrics.poll()["value"])
    assert seen == [0.5, 0.9, 0.7]
    result = metrics.finish()
    assert result["final"] == {"acc": 0.7}
    assert result["objective"]["value"] == 0.7, "the best value is one the file still holds"
    with open(tmp_path / "status.txt", "r+") as handle:  # longer, not from a line start
        handle.write("epoch=4 acc=0.800 loss=0.25\n")
    assert metrics.finish()["final"] == {"acc": 0.8, "loss": 0.25}


def test_an_appended_file_is_not_read_twice(tmp_path):
    metrics = reader(tmp_path, {"file": "training.csv"})
    with open(tmp_path / "training.csv", "w") as handle:
        handle.write("epoch,val_accuracy\n")
        for epoch in range(50):
            handle.write(f"{epoch},{epoch / 100}\n")
            handle.flush()
            metrics.poll()
    assert metrics.finish()["series"]["val_accuracy"] == [[e, e / 100] for e in range(50)]


def test_a_pattern_that_backtracks_exponentially_costs_bounded_time_and_blocks_no_thread(tmp_path):
    """A RED file's metrics pattern is the user's, the lines are the program's: ``(a|aa)+$`` on
    a line of 60 a's would backtrack for longer than the universe exists, holding the
    interpreter (on faice's server: every user's thread). The match gives up after
    MATCH_TIMEOUT_S, the source is not read further, and other threads run meanwhile."""
    import threading

    from faice.pipeline.metrics import MATCH_TIMEOUT_S

    stdout = tmp_path / "stdout.txt"
    stdout.write_text("val_accuracy=0.5\n" + "a" * 60 + "!\n" + ("a" * 60 + "!\n") * 50 + "val_accuracy=0.9\n")
    pattern = r"(?P<val_accuracy>[0-9.]+)|(?P<junk>(a|aa)+$)"
    ticks = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    started = time.monotonic()
    result = MetricsReader.for_batch(spec({"stdout": pattern}), outputs_dir=tmp_path, stdout_file=stdout).finish()
    took = time.monotonic() - started
    done.set()
    thread.join()
    assert took < MATCH_TIMEOUT_S + 2, f"{took:.1f} s: one give-up for the source, not one per line"
    assert len(ticks) > 0.5 * took / 0.01 * 0.5, "another thread ran while the pattern was matched"
    assert result["series"]["val_accuracy"] == [[0, 0.5]], "what was read before the give-up counts"
    assert any("took longer than" in p["reason"] and p.get("line") == 2 for p in result["problems"]), result["problems"]
