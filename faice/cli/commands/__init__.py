"""One module per command: ``add_parser(subparsers)`` (stdlib only) and ``run(args) -> int``."""
