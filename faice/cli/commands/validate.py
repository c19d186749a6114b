"""``faice validate REDFILE``: schema, semantics and the embedded CWL, every problem at once."""

from __future__ import annotations

import sys
from typing import Any

from faice.cli.options import add_debug, add_policy, add_variables, apply_policy, variable_sources
from faice.cli.parser import lazy, new_command
from faice.errors import FaiceError, Problem, ValidationError, format_key_path
from faice.files import dumps_json


def add_parser(subparsers) -> None:
    parser = new_command(
        subparsers,
        "validate",
        run=lazy("faice.cli.commands.validate:run"),
        help="check a RED file (schema, semantics, embedded CWL) and report every problem",
        description=(
            "Check a RED file against the RED 8/9 schemas and faice's extensions, the semantic\n"
            "rules (inputs match the cli, types, globs, variables, protected keys) and the\n"
            "embedded CWL tool (checked with cwltool). Every problem is reported with the file,\n"
            "line and key path. Variable values are never needed."
        ),
        examples=(
            "  faice validate experiment.red.yml\n"
            "  faice validate https://example.org/experiment.red.json\n"
            "  faice validate --check-access --variables vars.yml experiment.red.yml"
        ),
    )
    parser.add_argument("red_file", metavar="REDFILE", help="RED file: path, - for stdin, or http(s) URL")
    parser.add_argument(
        "--check-access",
        action="store_true",
        help="also probe every connector (credentials and remote paths); needs variable values",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_policy(parser)
    add_variables(parser)
    add_debug(parser)


def run(args: Any) -> int:
    """``faice validate REDFILE [--json] [--check-access]``: exit 0 when valid, 1 otherwise."""
    from faice.red.load import load_mapping, to_plain
    from faice.red.sweep import expand_batches
    from faice.red.validate import validate_red
    from faice.secrets import REDACTOR

    as_json = bool(args.json)
    try:
        document = load_mapping(args.red_file, "RED file")
        validate_red(document)
        data = to_plain(document.data)
        count = len(expand_batches(data, document.name))
    except ValidationError as exc:
        if not as_json:
            raise
        _print_json({"valid": False, "problems": [_problem_json(p) for p in exc.problems]})
        return 1
    except FaiceError as exc:
        if not as_json:
            raise
        _print_json({"valid": False, "problems": [_problem_json(Problem(args.red_file, (), exc.message))]})
        return exc.exit_code
    version = str(data.get("redVersion"))
    if args.policy:
        try:
            policy_check(args)
        except ValidationError as exc:
            if not as_json:
                raise
            _print_json({"valid": False, "problems": [_problem_json(p) for p in exc.problems]})
            return 1
    if args.check_access:
        access_problems = probed_access_problems(args)
        if access_problems:
            if as_json:
                _print_json({"valid": False, "problems": [_problem_json(p) for p in access_problems]})
                return 1
            raise ValidationError(
                access_problems, summary=f"{document.name}: connector access checks failed ({len(access_problems)}):"
            )
    if as_json:
        _print_json({"valid": True, "redVersion": version, "batches": count, "problems": []})
    else:
        from faice.red.search import is_search

        size = (f"a search of {data['sweep']['search']['trials']} trials" if is_search(data)
                else f"{count} batch{'es' if count != 1 else ''}")
        sys.stdout.write(REDACTOR.redact(f"{document.name} is valid (RED {version}, {size})") + "\n")
    return 0


def policy_check(args: Any) -> None:
    """``--policy FILE``: the agency's connector checks, here. Variables are filled only when
    ``--variables`` is given (a path from a variable is checked with its value); otherwise
    the file is checked as written."""
    from faice.red.prepare import load_experiment

    fill = bool(getattr(args, "variables", None))
    experiment = load_experiment(args.red_file, variables=variable_sources(args), fill=fill)
    apply_policy(args.policy, experiment)


def probed_access_problems(args: Any) -> list[Problem]:
    """``--check-access``: the connector probes of ``faice exec``'s preflight (credentials,
    remote paths), with variables filled; a problem for every input and output they fail."""
    from faice.connectors.staging import StagingSession
    from faice.pipeline.plan import connector_uses
    from faice.pipeline.plan import probe_access as probe
    from faice.red.prepare import load_experiment

    experiment = load_experiment(args.red_file, variables=variable_sources(args), fill=True)
    with_batch = len(experiment.batches) > 1 or "batches" in experiment.data
    kinds = {key: "Directory" if str((spec or {}).get("type", "File")).startswith("Directory") else "File"
             for key, spec in (experiment.cli.get("outputs") or {}).items()}
    uses = connector_uses(experiment.batches, kinds)
    from faice.runtime.tempdirs import owned_tempdir, remove_run_tempdir

    # Owned, so a killed `faice validate` leaves nothing that the next start keeps.
    workdir = owned_tempdir("faice-check-")
    try:
        with StagingSession(workdir, allowed_programs=_allowed_programs(args)) as session:
            failures = probe(uses, session, with_batch=with_batch)
    finally:
        remove_run_tempdir(workdir)
    problems = []
    for use, message in failures:
        path = use.key_path(with_batch=with_batch)
        label = format_key_path(path)
        problems.append(Problem(experiment.source, path, message.removeprefix(f"{label}: ").removeprefix(f"{label}.")))
    return problems


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.file,
        "path": format_key_path(problem.path) if problem.path else "",
        "line": problem.line,
        "column": problem.column,
        "message": problem.message,
    }


def _print_json(data: dict[str, Any]) -> None:
    from faice.secrets import REDACTOR

    sys.stdout.write(REDACTOR.redact(dumps_json(data, indent=4)) + "\n")


def _allowed_programs(args: Any) -> list[str] | None:
    if not getattr(args, "policy", None):
        return None
    from faice.connectors.policy import load_policy

    return list(load_policy(args.policy).external_programs)
