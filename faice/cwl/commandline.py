"""The command line of one batch, built by cwltool (CWL semantics come from cwltool, the reference implementation).

The RED ``cli`` is loaded once per run as a CWL CommandLineTool; for each batch cwltool's own
binding machinery (``_init_job`` + ``generate_arg``) turns the batch inputs into argv, so
ordering, prefixes, ``separate``, ``itemSeparator``, booleans and arrays follow the CWL v1.0
spec exactly (upstream placed prefixed arguments after positional ones; faice does not).

Where inputs appear in the container (chosen and documented here):

* a File/Directory input ``key`` is at ``/cc/inputs/<key>/<basename>``; the items of an
  array input ``key`` at ``/cc/inputs/<key>/<index>/<basename>``;
* ``basename`` is the RED ``basename`` when given, else the remote name the connector access
  names (``filePath``, ``dirPath``, ``path``, last part of ``url``) so that tools that check
  extensions work, else the input key (upstream's default).
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from faice.errors import ValidationError

INPUTS_ROOT = "/cc/inputs"
OUTPUTS_DIR = "/cc/outputs"
_CWL_LOCK = threading.Lock()  # cwltool's loader and builder are not documented as thread-safe


@dataclass
class StagedInput:
    """One File/Directory input of a batch: where it comes from and where the container sees it."""

    key: str  # input key, "key:index" for array items (upstream's spelling)
    kind: str  # "File" | "Directory"
    value: dict[str, Any]  # the RED object (class, connector, basename, ...)
    container_path: str

    @property
    def connector(self) -> dict[str, Any] | None:
        return self.value.get("connector")

    @property
    def mount(self) -> bool:
        return bool((self.connector or {}).get("mount"))


@dataclass
class BatchCommand:
    """Everything cwltool decided for one batch."""

    argv: list[str]
    staged: list[StagedInput] = field(default_factory=list)
    globs: dict[str, str] = field(default_factory=dict)  # output key → glob (references resolved)
    output_types: dict[str, str] = field(default_factory=dict)  # output key → File, Directory?, stdout, ...
    stdout: str | None = None  # cli.stdout (a file in /cc/outputs), None = not named
    stderr: str | None = None


def remote_name(value: dict[str, Any]) -> str | None:
    """The file name the connector access names, when it names one."""
    access = (value.get("connector") or {}).get("access") or {}
    if not isinstance(access, dict):
        return None
    for key in ("filePath", "dirPath", "path"):
        if isinstance(access.get(key), str) and access[key].strip("/"):
            return posixpath.basename(access[key].rstrip("/")) or None
    if isinstance(access.get("url"), str):
        name = posixpath.basename(unquote(urlparse(access["url"]).path).rstrip("/"))
        return name or None
    return None


def basename_for(key: str, value: dict[str, Any]) -> str:
    name = value.get("basename") or remote_name(value) or key
    return str(name).replace("/", "_")


class CommandBuilder:
    """Loads the RED ``cli`` into cwltool once; :meth:`build` gives each batch's command."""

    def __init__(self, cli: dict[str, Any], source: str = "RED file", *, always_cwltool: bool = False):
        from faice.cwl.binding import plain_tool

        self.cli = cli
        self.source = source
        # Plain tools (all RED allows) are bound directly, sparing the cwltool load (~0.6 s);
        # cwltool builds the rest. ``always_cwltool`` is for the tests that compare the two.
        self._tool = self._load(cli) if always_cwltool or not plain_tool(cli) else None

    def _load(self, cli: dict[str, Any]):
        """The tool validation already loaded (cached in :mod:`faice.cwl.tool`): one cwltool
        load per run instead of two."""
        from faice.cwl.tool import load_cli

        with _CWL_LOCK:
            tool, problems = load_cli(cli, self.source)
        if tool is None:
            detail = "; ".join(message for _, message in problems)
            raise ValidationError([], summary=f"{self.source}: cli: not a valid CWL tool: {detail}")
        return tool

    def build(self, inputs: dict[str, Any], *, label: str = "inputs") -> BatchCommand:
        """argv, staged inputs and output globs for one batch's ``inputs``."""
        if self._tool is None:
            return self._build_plain(inputs, label)
        from cwl_utils.errors import WorkflowException
        from cwltool.context import RuntimeContext
        from cwltool.utils import visit_class
        from schema_salad.exceptions import ValidationException

        job, staged = self._job(inputs)
        runtime = RuntimeContext()
        runtime.outdir = OUTPUTS_DIR
        runtime.tmpdir = "/tmp"

        def set_path(obj: dict[str, Any]) -> None:
            location = str(obj.get("location", ""))
            if location.startswith("file://"):
                obj["path"] = unquote(location[len("file://") :])

        try:
            with _CWL_LOCK:
                builder = self._tool._init_job(job, runtime)
                visit_class(builder.job, ("File", "Directory"), set_path)
                visit_class([b.get("datum") for b in builder.bindings], ("File", "Directory"), set_path)
                argv: list[str] = []
                for binding in sorted(builder.bindings, key=lambda b: b["position"]):
                    argv.extend(str(a) for a in builder.generate_arg(binding))
                command = self._command(argv, staged, builder.do_eval)
        except (WorkflowException, ValidationException) as exc:
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ValidationError([], summary=f"{self.source}: {label}: {message}") from None
        return command

    def _build_plain(self, inputs: dict[str, Any], label: str) -> BatchCommand:
        from faice.cwl.binding import BindingError, build_argv

        job, staged = self._job(inputs)
        try:
            argv = build_argv(self.cli, job)
        except BindingError as exc:
            raise ValidationError([], summary=f"{self.source}: {label}: {exc}") from None
        return self._command(argv, staged, lambda pattern: pattern)  # plain globs are literal

    def _job(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], list[StagedInput]]:
        """The CWL job object (File/Directory values at their container paths) and the inputs to stage."""
        staged: list[StagedInput] = []
        job = {key: self._job_value(key, value, staged) for key, value in inputs.items() if value is not None}
        return job, staged

    def _job_value(self, key: str, value: Any, staged: list[StagedInput]) -> Any:
        if isinstance(value, list):
            return [self._file_value(f"{key}:{i}", f"{key}/{i}", v, staged) for i, v in enumerate(value)]
        return self._file_value(key, key, value, staged)

    @staticmethod
    def _file_value(label: str, where: str, value: Any, staged: list[StagedInput]) -> Any:
        if not (isinstance(value, dict) and value.get("class") in ("File", "Directory")):
            return value
        name = basename_for(label.split(":")[0], value)
        path = f"{INPUTS_ROOT}/{where}/{name}"
        staged.append(StagedInput(label, value["class"], value, path))
        cwl: dict[str, Any] = {"class": value["class"], "location": "file://" + path, "path": path, "basename": name}
        for extra in ("size", "checksum"):
            if extra in value and value["class"] == "File":
                cwl[extra] = value[extra]
        if value["class"] == "Directory":
            cwl["listing"] = []  # the content is staged later; cwltool must not list it now
        return cwl

    def _command(self, argv: list[str], staged: list[StagedInput], evaluate: Callable[[str], Any]) -> BatchCommand:
        """The batch's command with its output globs, each evaluated by ``evaluate``."""
        globs: dict[str, str] = {}
        types: dict[str, str] = {}
        for key, spec in (self.cli.get("outputs") or {}).items():
            kind = str(spec.get("type"))
            types[key] = kind
            if kind in ("stdout", "stderr"):
                globs[key] = self.cli.get(kind) or ""  # "" = the captured stream itself
                continue
            pattern = (spec.get("outputBinding") or {}).get("glob")
            if pattern is not None:
                globs[key] = str(evaluate(pattern))
        return BatchCommand(argv=argv, staged=staged, globs=globs, output_types=types,
                            stdout=self.cli.get("stdout"), stderr=self.cli.get("stderr"))
