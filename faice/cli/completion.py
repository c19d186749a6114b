"""Shell completion scripts generated from the argparse tree (commands, sub-commands, flags)."""

from __future__ import annotations

import argparse

from faice.cli.parser import build_parser


def _walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], list[str]]:
    """Map each command path to the words that may follow it."""
    words: list[str] = []
    table: dict[tuple[str, ...], list[str]] = {}
    for action in parser._actions:
        words.extend(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                table.update(_walk(child, prefix + (name,)))
    table[prefix] = sorted(set(words))
    return table


def completion_script(shell: str) -> str:
    table = _walk(build_parser())
    cases = "\n".join(
        f'        "{" ".join(path)}") words="{" ".join(words)}" ;;' for path, words in sorted(table.items())
    )
    body = f"""_faice_words() {{
    local words=""
    case "$1" in
{cases}
        *) return 1 ;;
    esac
    echo "$words"
}}
_faice_complete() {{
    local cur word path="" i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        [[ $word == -* ]] && continue
        if _faice_words "${{path:+$path }}$word" >/dev/null; then path="${{path:+$path }}$word"; fi
    done
    COMPREPLY=($(compgen -W "$(_faice_words "$path")" -- "$cur"))
}}
"""
    if shell == "bash":
        return body + "complete -o default -F _faice_complete faice"
    return "autoload -U +X bashcompinit && bashcompinit\n" + body + "complete -o default -F _faice_complete faice"
