"""Options shared by several commands, with upstream faice's names and defaults."""

from __future__ import annotations

import argparse

FORMATS = ("json", "yaml", "yml")


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-d", "--debug", action="store_true", help="show tracebacks and debug messages on errors"
    )


def add_format(parser: argparse.ArgumentParser, default: str = "yaml") -> None:
    parser.add_argument(
        "--format", choices=FORMATS, default=default, help=f"output format (default: {default})"
    )


def add_variables(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("variables ({{name}} placeholders under access/auth)")
    group.add_argument(
        "--variables",
        metavar="FILE",
        action="append",
        default=[],
        help="YAML/JSON mapping of variable values; repeatable, later files win",
    )
    group.add_argument(
        "--non-interactive",
        action="store_true",
        help="never prompt; fail listing every variable that the file and keyring leave unresolved",
    )
    group.add_argument(
        "--keyring-service",
        metavar="NAME",
        default="red",
        help="keyring service to look variables up in (default: red)",
    )


def variable_sources(args: argparse.Namespace):
    """Where ``{{variable}}`` values come from, as the variable flags say."""
    from faice.red.variables import VariableSources

    return VariableSources(
        files=list(getattr(args, "variables", None) or []),
        keyring_service=getattr(args, "keyring_service", None) or "red",
        non_interactive=bool(getattr(args, "non_interactive", False)),
    )


def add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="check connectors against a connector policy (YAML/JSON, as faice agency serve --policy): "
        "allowed connectors, file roots, external programs, s3 without auth",
    )


def apply_policy(policy_file: str | None, experiment) -> list[str] | None:
    """``--policy FILE``: refuse what the policy forbids (a ValidationError naming each key path);
    returns the policy's external programs (None without a policy)."""
    if not policy_file:
        return None
    from faice.connectors.policy import check_batches, load_policy, policy_error

    policy = load_policy(policy_file)
    batches = [(b.inputs, b.outputs) for b in experiment.batches]
    with_batches = "batches" in experiment.data or "sweep" in experiment.data or len(batches) > 1
    problems = check_batches(policy, batches, experiment.source, with_batches=with_batches)
    if problems:
        raise policy_error(problems, policy_file)
    return list(policy.external_programs)
