"""``faice results --to-mlflow``: one MLflow run per batch, readable with MLflow's own client."""

from __future__ import annotations

import json
import subprocess
import sys

from ranked_run import make_run, winner_id

from faice.cli import main


def test_export_to_a_local_store(tmp_path, monkeypatch, optional_extra):
    optional_extra("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    expected = make_run(run)
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, "-m", "faice", "results", str(run), "--to-mlflow", "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["batch"] == winner_id(expected), "the table is still printed"
    assert "10 batches exported, 0 exported before" in done.stderr
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("faice run")
    runs = {r.data.tags["faice.batchId"]: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 10
    best = runs[winner_id(expected)]
    assert best.data.tags["faice.best"] == "true" and best.info.status == "FINISHED"
    assert best.data.params == {"learning_rate": "0.1", "batch_size": "16"}
    history = client.get_metric_history(best.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(e, v) for e, v in
                                                    json.loads((run / "batches" / winner_id(expected) / "metrics.json")
                                                               .read_text())["series"]["val_accuracy"]]
    assert [a.path for a in client.list_artifacts(best.info.run_id)] == ["result.json"]
    assert runs["b-failed000000"].info.status == "FAILED"
    again = subprocess.run([sys.executable, "-m", "faice", "results", str(run), "--to-mlflow", "--format", "csv"],
                           capture_output=True, text=True, timeout=300)
    assert "0 batches exported, 10 exported before" in again.stderr


def test_hint_without_mlflow(tmp_path, monkeypatch, capsys):
    make_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.chdir(tmp_path)
    assert main(["results", str(tmp_path / "run"), "--to-mlflow"]) == 1
    captured = capsys.readouterr()
    assert "--to-mlflow needs MLflow" in captured.err and "pip install 'faice[mlflow]'" in captured.err
    assert captured.out == "", "checked before anything is printed"
    assert not (tmp_path / "mlruns").exists()
