"""Where the agency is and who talks to it, for ``faice status|logs|cancel|list``.

``--agency URL``, else ``--red-file`` (its ``execution.settings.access``, variables filled
like ``faice exec``), else ``$FAICE_AGENCY_URL``, else the config file
(``$XDG_CONFIG_HOME/faice/config.yml``: ``agency: {url, username}``). Without a RED file the
username comes from ``$FAICE_AGENCY_USER`` or the config file and the password from the
variables files or the keyring (key ``agency_password``), else a prompt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from faice.engines.agency.client import AgencyClient
from faice.errors import UsageError
from faice.red.variables import VariableSources

PASSWORD_KEY = "agency_password"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "faice" / "config.yml"


def _config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    from faice.red.load import load_mapping, to_plain

    agency = to_plain(load_mapping(str(path), "config file").data).get("agency") or {}
    if not isinstance(agency, dict):
        raise UsageError(f"{path}: agency: expected a mapping with url and username")
    return agency


def connect(url: str | None, red_file: str | None, variables: VariableSources) -> AgencyClient:
    """A client for the agency the flags, environment or config file name."""
    if red_file and not url:
        from faice.engines.agency.engine import agency_access
        from faice.red.prepare import load_experiment

        experiment = load_experiment(red_file, variables=variables)
        return AgencyClient(*agency_access(experiment.data, experiment.source))
    config = _config()
    url = url or os.environ.get("FAICE_AGENCY_URL") or config.get("url")
    if not url:
        raise UsageError(
            "no agency given: use --agency URL, --red-file REDFILE, $FAICE_AGENCY_URL "
            f"or {config_path()} (agency: {{url: ..., username: ...}})"
        )
    username = os.environ.get("FAICE_AGENCY_USER") or config.get("username")
    if not username:
        raise UsageError(f"no agency username: set $FAICE_AGENCY_USER or agency.username in {config_path()}")
    return AgencyClient(str(url), str(username), _password(variables, str(username)))


def _password(variables: VariableSources, username: str) -> str:
    values = variables.file_values()
    if values.get(PASSWORD_KEY) is not None:
        return str(values[PASSWORD_KEY])
    service = variables.keyring_service
    try:
        import keyring

        stored = keyring.get_password(service, PASSWORD_KEY)
    except Exception:  # no usable keyring backend: fall back to the prompt
        stored = None
    if stored:
        return stored
    if variables.non_interactive or not sys.stdin.isatty():
        raise UsageError(
            f"no password for agency user {username}: put {PASSWORD_KEY} in a --variables file "
            f"or in keyring service {service!r}"
        )
    import getpass

    return getpass.getpass(f"Agency password for {username}: ")
