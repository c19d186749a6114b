"""Reading a batch's metrics from real files while they are written (faice.pipeline.metrics)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from faice.pipeline.metrics import MetricsReader, MetricsSpec, summary, thinned

# What Keras' CSVLogger writes (separator ',', CRLF line ends, epochs from 0).
KERAS_HEADER = "epoch,accuracy,loss,val_accuracy,val_loss\r\n"
KERAS_ROWS = [
    "0,0.5812,0.6731,0.6125,0.6502\r\n",
    "1,0.7044,0.5620,0.6950,0.5873\r\n",
    "2,0.7703,0.4811,0.7400,0.5433\r\n",
    "3,0.8120,0.4202,0.7225,0.5650\r\n",
]


def spec(*sources: dict, goal: str = "max", name: str = "val_accuracy", **extra) -> MetricsSpec:
    return MetricsSpec.from_mapping({"objective": {"name": name, "goal": goal, **extra}, "sources": list(sources)})


def reader(tmp_path: Path, *sources: dict, **kwargs) -> MetricsReader:
    return MetricsReader.for_batch(spec(*sources, **kwargs), outputs_dir=tmp_path, stdout_file=tmp_path / "stdout.txt")


def test_keras_csvlogger_file_read_while_written(tmp_path):
    log = tmp_path / "training.csv"
    metrics = reader(tmp_path, {"file": "training.csv"})
    assert metrics.poll()["value"] is None, "no file yet: nothing, no error"
    with open(log, "w", newline="") as handle:
        handle.write(KERAS_HEADER + KERAS_ROWS[0])
        handle.flush()
        assert metrics.poll() == {"name": "val_accuracy", "step": 0, "value": 0.6125}
        handle.write(KERAS_ROWS[1] + KERAS_ROWS[2][:7])  # the third line half written
        handle.flush()
        assert metrics.poll()["step"] == 1, "the half-written line waits"
        assert metrics.series() == [[0, 0.6125], [1, 0.695]]
        handle.write(KERAS_ROWS[2][7:] + KERAS_ROWS[3])
    result = metrics.finish()
    assert result["series"]["val_accuracy"] == [[0, 0.6125], [1, 0.695], [2, 0.74], [3, 0.7225]]
    assert "epoch" not in result["series"], "the step column is the x axis, not a metric"
    assert result["final"] == {"accuracy": 0.812, "loss": 0.4202, "val_accuracy": 0.7225, "val_loss": 0.565}
    assert result["best"] == {"step": 2, "accuracy": 0.7703, "loss": 0.4811, "val_accuracy": 0.74, "val_loss": 0.5433}
    assert result["objective"] == {"name": "val_accuracy", "goal": "max", "scope": "final", "value": 0.7225, "step": 3}
    assert result["problems"] == []
    json.dumps(result, allow_nan=False)  # strict JSON: loads anywhere


def test_objective_scope_best_and_goal_min(tmp_path):
    (tmp_path / "training.csv").write_text(KERAS_HEADER + "".join(KERAS_ROWS))
    best = reader(tmp_path, {"file": "training.csv"}, scope="best").finish()
    assert best["objective"]["value"] == 0.74 and best["objective"]["step"] == 2
    low = reader(tmp_path, {"file": "training.csv"}, name="val_loss", goal="min").finish()
    assert low["best"]["step"] == 2 and low["objective"]["value"] == 0.565


def test_malformed_lines_nan_and_non_numeric_columns_are_reported_not_fatal(tmp_path):
    (tmp_path / "log.csv").write_text(
        "epoch;phase;loss;val_accuracy\n"
        "0;warmup;0.9;0.5\n"
        "1;train;nan;0.6\n"
        "this line is broken\n"
        "2;train;inf;0.7\n"
        "3;train;0.4;\n"
    )
    result = reader(tmp_path, {"file": "log.csv", "separator": ";"}).finish()
    assert result["series"]["val_accuracy"] == [[0, 0.5], [1, 0.6], [2, 0.7]]
    assert result["series"]["loss"] == [[0, 0.9], [1, None], [2, None], [3, 0.4]]
    assert "phase" not in result["series"]
    reasons = {(p["line"], p["reason"]) for p in result["problems"]}
    assert (2, "'phase' is not a number ('warmup'); it is skipped") in reasons, "reported once, with its line"
    assert (3, "loss is nan (recorded as null)") in reasons
    assert (4, "expected 4 fields like the header, got 1") in reasons
    assert len(result["problems"]) == 3, result["problems"]
    assert result["objective"]["value"] == 0.7, "the empty cell of the last line is no value"
    json.dumps(result, allow_nan=False)


def test_truncated_or_replaced_file_is_read_again(tmp_path):
    log = tmp_path / "metrics.jsonl"
    metrics = reader(tmp_path, {"file": "metrics.jsonl"})
    log.write_text("".join(json.dumps({"step": s, "val_accuracy": s / 10}) + "\n" for s in range(5)))
    metrics.poll()
    assert len(metrics.series()) == 5
    log.write_text(json.dumps({"step": 0, "val_accuracy": 0.9}) + "\n")  # a retry starts over (truncation)
    metrics.poll()
    assert metrics.series() == [[0, 0.9]]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text("".join(json.dumps({"step": s, "val_accuracy": 0.5}) + "\n" for s in range(3)))
    os.replace(replacement, log)  # rotation: a new file under the same name, longer than the old one
    result = metrics.finish()
    assert result["series"]["val_accuracy"] == [[0, 0.5], [1, 0.5], [2, 0.5]]


def test_jsonl_with_nested_values_and_bad_lines(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"epoch": 1, "train": {"loss": 0.5}, "val_accuracy": 0.7, "note": "x"}\n'
        "[1, 2]\n"
        '{"epoch": 2, "val_accuracy": 0.8\n'
        '{"epoch": 3, "train": {"loss": 0.25}, "val_accuracy": 0.75, "note": "y"}\n'
    )
    result = reader(tmp_path, {"file": "m.jsonl"}).finish()
    assert result["series"]["train.loss"] == [[1, 0.5], [3, 0.25]]
    lines = sorted(p["line"] for p in result["problems"])
    assert lines == [1, 2, 3], result["problems"]  # 'note' once, the list, the cut object


def test_final_json_overrides_and_stdout_pattern(tmp_path):
    (tmp_path / "stdout.txt").write_text(
        "# model=numpy device=cpu learning_rate=0.1\n"
        "epoch=1 loss=0.70 val_accuracy=0.61 seconds=0.5\n"
        "some unrelated line\n"
        "epoch=2 loss=0.55 val_accuracy=0.68 seconds=1.0\n"
    )
    (tmp_path / "final.json").write_text('{"val_accuracy": 0.7, "test_accuracy": 0.69, "model": "mlp"}')
    result = reader(tmp_path, {"stdout": True}, {"file": "final.json"}).finish()
    assert result["series"]["val_accuracy"] == [[1, 0.61], [2, 0.68]]
    assert "learning_rate" not in result["series"], "comment lines are not metrics"
    assert result["final"]["val_accuracy"] == 0.7 and result["final"]["test_accuracy"] == 0.69
    assert result["objective"]["value"] == 0.7
    assert [p["reason"] for p in result["problems"]] == ["'model' is not a number ('mlp'); it is skipped"]


def test_custom_pattern_with_a_group_per_metric(tmp_path):
    (tmp_path / "stdout.txt").write_text("Epoch 1/3 - acc: 0.50\nEpoch 2/3 - acc: 0.75\n")
    pattern = r"Epoch (?P<epoch>\d+)/\d+ - acc: (?P<acc>[0-9.]+)"
    result = reader(tmp_path, {"stdout": pattern}, name="acc").finish()
    assert result["series"]["acc"] == [[1, 0.5], [2, 0.75]]


def test_missing_file_is_reported_at_the_end_only(tmp_path):
    metrics = reader(tmp_path, {"file": "never.csv"})
    metrics.poll()
    result = metrics.finish()
    assert [p["source"] for p in result["problems"]] == ["never.csv"]
    assert result["objective"]["value"] is None


def test_series_memory_is_bounded_by_thinning(tmp_path):
    rows = "".join(f"{i},{i / 100000}\n" for i in range(100_000))
    (tmp_path / "long.csv").write_text("step,val_accuracy\n" + rows)
    result = MetricsReader.for_batch(spec({"file": "long.csv"}), outputs_dir=tmp_path).finish()
    points = result["series"]["val_accuracy"]
    assert len(points) <= 10_001
    assert points[0] == [0, 0.0] and points[-1] == [99_999, 0.99999], "first and last kept"
    steps = [p[0] for p in points[:-1]]
    assert len({b - a for a, b in zip(steps, steps[1:], strict=False)}) == 1, "evenly thinned"
    assert result["final"]["val_accuracy"] == 0.99999


def test_a_kept_series_is_thinned_evenly_with_its_last_point():
    """What a search's sampler and an agency batch document get of a long series."""
    points = [[step, step / 1000] for step in range(1001)]
    kept = thinned(points, 200)
    assert len(kept) <= 200 and kept[0] == [0, 0.0] and kept[-1] == [1000, 1.0]
    steps = [p[0] for p in kept[:-1]]
    assert len({b - a for a, b in zip(steps, steps[1:], strict=False)}) == 1, "evenly thinned"
    assert thinned(points[:200], 200) == points[:200]  # a short series is kept whole


def test_over_long_line_is_skipped(tmp_path):
    (tmp_path / "m.csv").write_text("epoch,val_accuracy\n0,0.1\n" + "9" * 200_000 + "\n1,0.2\n")
    result = reader(tmp_path, {"file": "m.csv"}).finish()
    assert result["series"]["val_accuracy"] == [[0, 0.1], [1, 0.2]]
    assert any("longer than" in p["reason"] and p["line"] == 3 for p in result["problems"])


def test_file_names_take_the_batch_values(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "training_2_lr0.01.log").write_text("epoch=1 val_accuracy=0.5\n")
    metrics = MetricsReader.for_batch(
        spec({"file": "training_$(sweep.index)_lr$(sweep.learning_rate).log", "in": "log_dir", "format": "keyvalue"}),
        outputs_dir=tmp_path / "outputs", input_dirs={"log_dir": logs},
        parameters={"learning_rate": 0.01}, index=2,
    )
    assert metrics.finish()["objective"]["value"] == 0.5


def test_summary_drops_the_series(tmp_path):
    (tmp_path / "training.csv").write_text(KERAS_HEADER + "".join(KERAS_ROWS))
    result = reader(tmp_path, {"file": "training.csv"}).finish()
    assert set(summary(result)) == {"final", "best", "objective", "problems"}


# ---------------------------------------------------------------- a writable SSHFS mount


@pytest.mark.ssh
def test_csv_log_written_to_a_writable_sshfs_mount(ssh_server, tmp_path):
    """The ML guide's setup: the program writes its log into a writable SSHFS mount and faice
    reads it through the host side of the same mount while training runs."""
    from faice.connectors.staging import ConnectorRequest, StagingSession

    prefix = f"metrics-{uuid.uuid4().hex[:10]}"
    remote = ssh_server.home / "data" / prefix
    remote.mkdir(parents=True)
    shutil.chown(remote, ssh_server.user, ssh_server.user)
    known_hosts = tmp_path / "known_hosts"
    shutil.copy(ssh_server.known_hosts, known_hosts)
    access = {"host": ssh_server.host, "port": ssh_server.port,
              "auth": {"username": ssh_server.user, "password": ssh_server.password},
              "hostKeyPolicy": "strict", "knownHostsFile": str(known_hosts),
              "dirPath": f"data/{prefix}", "writable": True}
    try:
        with StagingSession(tmp_path / "w") as session:
            mount = tmp_path / "logs"
            session.mount_dir(ConnectorRequest("log_dir", "ssh", access, mount=True), mount, writable=True)
            metrics = MetricsReader.for_batch(spec({"file": "training.csv", "in": "log_dir"}),
                                              outputs_dir=tmp_path / "outputs", input_dirs={"log_dir": mount})
            with open(mount / "training.csv", "w", newline="") as handle:
                handle.write(KERAS_HEADER + KERAS_ROWS[0] + KERAS_ROWS[1][:5])
                handle.flush()
                os.fsync(handle.fileno())
                assert metrics.poll() == {"name": "val_accuracy", "step": 0, "value": 0.6125}
                handle.write(KERAS_ROWS[1][5:] + KERAS_ROWS[2])
                handle.flush()
                os.fsync(handle.fileno())
                assert metrics.poll()["step"] == 2
            result = metrics.finish()
            session.umount(mount)
        assert result["objective"]["value"] == 0.74 and result["problems"] == []
        assert (remote / "training.csv").read_text().count("\n") == 4, "the log itself is on the server"
    finally:
        shutil.rmtree(remote, ignore_errors=True)
