"""``faice completion bash|zsh``: print a shell completion script."""

from __future__ import annotations

from faice.cli.parser import new_command


def add_parser(subparsers) -> None:
    parser = new_command(
        subparsers,
        "completion",
        help="print a shell completion script",
        run=run,
        examples='  eval "$(faice completion bash)"\n  faice completion zsh > ~/.zfunc/_faice',
    )
    parser.add_argument("shell", choices=("bash", "zsh"))


def run(args) -> int:
    from faice.cli.completion import completion_script

    print(completion_script(args.shell))
    return 0
