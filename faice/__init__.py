"""faice: run reproducible, containerised experiments described by RED files.

Importing this package must stay cheap: the CLI's ``--help`` and ``--version`` paths import
nothing heavier than the standard library (cwltool, docker, boto3 and asyncssh load lazily).
"""

__version__ = "10.0.0.dev0"
RED_VERSIONS = ("8", "9")
