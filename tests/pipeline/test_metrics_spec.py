"""The ``metrics`` RED extension: schema, semantic checks with key paths, and that it never
reaches an upstream agency."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from red_yaml import red_head

from faice.errors import ValidationError
from faice.red.load import parse_text, to_plain
from faice.red.metrics import MetricsSpec
from faice.red.validate import validate_red

BASE = red_head("[python3, train.py]") + """\
  inputs:
    learning_rate: {type: float, inputBinding: {prefix: --lr}}
    log_dir: {type: Directory, inputBinding: {prefix: --log-dir}}
    epochs: {type: int, inputBinding: {prefix: --epochs}}
  outputs: {}
inputs:
  learning_rate: 0.1
  log_dir: {class: Directory, connector: {command: file, access: {path: logs}}}
  epochs: 3
sweep:
  grid: {learning_rate: [0.1, 0.01]}
container: {engine: docker, settings: {image: {url: debian:bookworm-slim}}}
execution: {engine: ccfaice, settings: {}}
"""

GOOD = """\
metrics:
  objective: {name: val_accuracy, goal: max}
  earlyStopping: {rule: median, graceSteps: 2, minBatches: 3}
  sources:
    - {file: training.csv}
    - {file: "train_$(sweep.index)_lr$(sweep.learning_rate).log", in: log_dir, format: keyvalue}
    - {file: final.json}
    - {stdout: '(?P<name>\\w+)=(?P<value>[-+0-9.eE]+)'}
"""


def document(extra: str):
    return parse_text("exp.red.yml", BASE + extra)


def problems(extra: str) -> list[str]:
    with pytest.raises(ValidationError) as err:
        validate_red(document(extra))
    return [f"{'.'.join(map(str, p.path))}: {p.message}" for p in err.value.problems]


def test_a_full_metrics_section_is_valid_and_parsed():
    doc = document(GOOD)
    validate_red(doc)
    spec = MetricsSpec.from_red(doc.data, "exp.red.yml")
    assert spec.objective.name == "val_accuracy" and spec.objective.goal == "max"
    assert [s.format for s in spec.sources] == ["csv", "keyvalue", "json", "keyvalue"]
    assert spec.sources[1].directory == "log_dir"
    assert spec.early_stopping.grace_steps == 2 and spec.early_stopping.min_batches == 3


def test_bad_regex_and_groups_are_named_by_key_path():
    found = problems("""\
metrics:
  objective: {name: acc, goal: max}
  sources:
    - {stdout: '(?P<name>\\w+=('}
    - {stdout: 'acc=([0-9.]+)'}
    - {stdout: '(?P<name>\\w+)=[0-9.]+'}
""")
    text = "\n".join(found)
    assert "metrics.sources.0.stdout: not a valid regular expression" in text
    assert "metrics.sources.1.stdout: the pattern needs named groups" in text
    assert "metrics.sources.2.stdout: a pattern with a group 'name' needs a group 'value'" in text


def test_objective_problems():
    text = "\n".join(problems("metrics:\n  objective: {goal: maximise}\n  sources: [{file: a.csv}]\n"))
    assert "metrics.objective.name: missing" in text
    assert "metrics.objective.goal: expected min or max, got 'maximise'" in text
    assert sum(line.startswith("metrics.objective.goal:") for line in text.splitlines()) == 1, "said once"
    text = "\n".join(problems("metrics:\n  sources: [{file: a.csv}]\n"))
    assert "metrics.objective: missing" in text


def test_paths_stay_inside_the_batch():
    text = "\n".join(problems("""\
metrics:
  objective: {name: acc, goal: min}
  sources:
    - {file: /etc/passwd, format: csv}
    - {file: ../../x.csv}
    - {file: a.log}
    - {file: a.csv, in: epochs}
    - {file: a.csv, in: nothing}
    - {file: "x_$(sweep.nope).csv"}
"""))
    assert "metrics.sources.0.file: expected a path relative to the batch's outputs" in text
    assert "metrics.sources.1.file: '..' is not allowed" in text
    assert "metrics.sources.2.format: cannot tell the format of 'a.log'" in text
    assert "metrics.sources.3.in: cli input 'epochs' is not a Directory" in text
    assert "metrics.sources.4.in: expected the name of a Directory input of the cli, got 'nothing'; Directory inputs: log_dir" in text
    assert "metrics.sources.5.file: unknown sweep parameter in $(sweep.nope)" in text


def test_source_needs_exactly_one_of_file_or_stdout():
    text = "\n".join(problems("metrics:\n  objective: {name: a, goal: min}\n  sources: [{format: csv}]\n"))
    assert "metrics.sources.0: expected exactly one of file" in text


def test_metrics_is_stripped_before_sending_to_an_agency(tmp_path):
    """``faice convert sweep``/``batches`` (what upstream tools and agencies get) drop it, like sweep."""
    red = tmp_path / "exp.red.yml"
    red.write_text(BASE + GOOD)
    out = subprocess.run([sys.executable, "-m", "faice", "convert", "sweep", "--format", "json", str(red)],
                         capture_output=True, text=True, check=True).stdout
    plain = json.loads(out)
    assert "metrics" not in plain and "sweep" not in plain and len(plain["batches"]) == 2
    from faice.red.sweep import expanded_red

    no_sweep = to_plain(document(GOOD).data)
    del no_sweep["sweep"]
    no_sweep["metrics"]["sources"][1]["file"] = "train.log"
    assert "metrics" not in expanded_red(no_sweep, "exp.red.yml"), "also without a sweep (what agencies receive)"


def test_schema_describes_metrics():
    from faice.red.schemas import schema_problems

    data = to_plain(document(GOOD).data)
    assert [f for f in schema_problems("red", data) if f[0][:1] == ("metrics",)] == []
    bad = copy.deepcopy(data)
    bad["metrics"]["sources"][0]["format"] = "xml"
    assert any(path[:3] == ("metrics", "sources", 0) for path, _ in schema_problems("red", bad))
