"""faice binds plain tools itself (no cwltool load); the argv must be exactly cwltool's.

Hypothesis generates RED-shaped tools (every type, position, prefix, separate, itemSeparator)
and jobs (fitting values, missing and null ones, wrong types, out-of-range ints) and compares
the direct binding with cwltool's on the same input.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faice.cwl.binding import plain_tool
from faice.cwl.commandline import CommandBuilder
from faice.cwl.types import check_value
from faice.errors import ValidationError

BASES = ["string", "int", "long", "float", "double", "boolean", "File", "Directory"]
names = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=6).filter(lambda s: s[0].isalpha())
words = st.text(string.ascii_letters + string.digits + "-=,._ ", max_size=6)


@st.composite
def tool_and_job(draw):
    inputs, job = {}, {}
    for name in draw(st.lists(names, min_size=1, max_size=5, unique=True)):
        base = draw(st.sampled_from(BASES))
        array, optional = draw(st.booleans()), draw(st.booleans())
        cli_type = base + ("[]" if array else "") + ("?" if optional else "")
        binding = {}
        if draw(st.booleans()):
            binding["position"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            binding["prefix"] = draw(st.sampled_from(["-x", "--flag", "--n=", ""]))
            if draw(st.booleans()):
                binding["separate"] = draw(st.booleans())
        if array and draw(st.booleans()):
            binding["itemSeparator"] = draw(st.sampled_from([",", " ", ""]))
        inputs[name] = {"type": cli_type, "inputBinding": binding}
        value = draw(value_for(base, array))
        choice = draw(st.integers(0, 19))
        if choice == 0:
            continue  # missing
        if choice == 1:
            value = None
        elif choice == 2:
            value = draw(st.one_of(st.integers(-(2**40), 2**40), words, st.booleans()))  # maybe wrong type
        job[name] = value
    base_command = draw(st.sampled_from([["prog"], "prog", ["sh", "-c"], [" spaced "], None]))
    cli = {"cwlVersion": "v1.0", "class": "CommandLineTool", "inputs": inputs,
           "outputs": {"o": {"type": "File?", "outputBinding": {"glob": "*.txt"}}, "s": {"type": "stdout"}},
           "stdout": "out.log"}
    if base_command is not None:
        cli["baseCommand"] = base_command
    return cli, job


def value_for(base, array):
    scalar = {
        "string": words,
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**40), 2**40),
        "float": st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-5, 5)),
        "double": st.floats(-1e6, 1e6, allow_nan=False),
        "boolean": st.booleans(),
        "File": st.builds(lambda n: {"class": "File", "basename": n + ".csv", "connector": {"command": "file", "access": {}}}, names),
        "Directory": st.builds(lambda n: {"class": "Directory", "basename": n, "connector": {"command": "file", "access": {}}}, names),
    }[base]
    return st.lists(scalar, max_size=3) if array else scalar


def outcome(builder, job):
    try:
        command = builder.build(job)
    except ValidationError:
        return "error"
    return command.argv, command.globs, command.output_types


def cwltool_accepts_separate(cli):
    return all(b.get("separate", True) or "prefix" in b for b in (s["inputBinding"] for s in cli["inputs"].values()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tool_and_job())
def test_direct_binding_equals_cwltool(case):
    cli, job = case
    assert plain_tool(cli)
    direct = CommandBuilder(cli)
    assert direct._tool is None, "a plain tool must not load cwltool"
    if any(check_value(spec["type"], job.get(name)) for name, spec in cli["inputs"].items()):
        # faice is stricter than cwltool here (e.g. a boolean for an int); `faice validate`
        # refuses such a RED file before any command line is built.
        assert outcome(direct, job) == "error"
        return
    reference = CommandBuilder(cli, always_cwltool=True)
    assert outcome(direct, job) == outcome(reference, job)


@pytest.mark.parametrize(
    "change",
    [
        lambda cli: cli["outputs"]["o"]["outputBinding"].update(glob="$(inputs.a).txt"),
        lambda cli: cli.update(stdout="$(inputs.a).log"),
        lambda cli: cli.update(requirements=[{"class": "InlineJavascriptRequirement"}]),
        lambda cli: cli["inputs"]["a"]["inputBinding"].update(valueFrom="x"),
        lambda cli: cli["inputs"]["a"]["inputBinding"].update(separate=False),
    ],
)
def test_anything_else_is_left_to_cwltool(change):
    cli = {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "prog",
           "inputs": {"a": {"type": "string", "inputBinding": {}}},
           "outputs": {"o": {"type": "File", "outputBinding": {"glob": "x"}}}}
    assert plain_tool(cli)
    change(cli)
    assert not plain_tool(cli)


def test_out_of_range_int_is_refused_like_cwltool():
    cli = {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "prog",
           "inputs": {"n": {"type": "int", "inputBinding": {}}}, "outputs": {}}
    with pytest.raises(ValidationError, match=r"batches\[0\]\.inputs: input 'n': expected an integer from -2147483648 to 2147483647 \(cli type int\)"):
        CommandBuilder(cli).build({"n": 3_000_000_000}, label="batches[0].inputs")
    assert outcome(CommandBuilder(cli, always_cwltool=True), {"n": 3_000_000_000}) == "error"


def test_booleans_joined_by_item_separator_render_as_cwltool_does():
    """docs/red-reference.md says `True`/`False`: the text cwltool itself produces."""
    cli = {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["echo"], "outputs": {},
           "inputs": {"flags": {"type": "boolean[]", "inputBinding": {"prefix": "--flags", "itemSeparator": ","}}}}
    job = {"flags": [True, False]}
    direct = CommandBuilder(cli)
    assert direct._tool is None
    reference = CommandBuilder(cli, always_cwltool=True)
    assert outcome(direct, job) == outcome(reference, job)
    assert "True,False" in str(outcome(reference, job))
