"""External connectors: programs on the host PATH speaking the RED connector CLI 1 protocol.

``PROGRAM cli-version`` must print ``1`` (or ``0.1``); then ``PROGRAM <op>-validate
ACCESS_JSON [--listing=LISTING_JSON]`` and ``PROGRAM <op> ACCESS_JSON PATH
[--listing=LISTING_JSON]``, ``PROGRAM umount-dir PATH``. ACCESS_JSON and LISTING_JSON are
``/dev/fd/N``: anonymous memory files the program inherits, never on disk and gone with the
processes (also after a SIGKILL), so secrets never appear in argv, the environment or
files left behind (without memfd: 0600 files in a private owned temp dir that the next
start removes if faice was killed); the program's stderr becomes the error message (redacted by the framework).
Each call runs in its own process group with a time limit ($FAICE_CONNECTOR_TIMEOUT,
default 6 h); on timeout, cancellation (the session's cancel event: Ctrl-C, SIGTERM) or any
error the whole group is ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from faice.connectors.api import Connector, ConnectorFailure, Listing, Progress, TransferCancelled

SUPPORTED_CLI_VERSIONS = ("1", "0.1")
TIMEOUT_VARIABLE = "FAICE_CONNECTOR_TIMEOUT"
DEFAULT_CALL_TIMEOUT = 6 * 3600.0  # seconds: generous, a large data set on a slow link
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a stopped program's group
POLL_S = 0.2  # how often a running call looks at the cancel event
_DIR_OPERATIONS = ("receive-dir", "send-dir")


class ExternalConnector(Connector):
    """Runs one external connector program; the program validates ``access`` itself."""

    names = ()
    access_schema = {"type": "object"}

    def __init__(self, command: str, program: str, *, timeout: float | None = None,
                 cancel: threading.Event | None = None) -> None:
        super().__init__(timeout=timeout)
        self.command = command
        self.program = program
        self.cancel = cancel  # the session's: the framework stops waiting, the program is ended here
        self._version_lock = threading.Lock()
        self._version_checked = False

    # ---------------------------------------------------------------- protocol plumbing

    def _check_version(self) -> None:
        with self._version_lock:
            if self._version_checked:
                return
            result = self._run(["cli-version"])
            lines = result.stdout.strip().splitlines()
            if len(lines) != 1:
                raise ConnectorFailure(
                    f"{self.command} cli-version printed {len(lines)} lines; a RED connector prints exactly one"
                )
            if lines[0].strip() not in SUPPORTED_CLI_VERSIONS:
                raise ConnectorFailure(
                    f"{self.command} speaks connector cli-version {lines[0].strip()!r}; faice supports "
                    f"{', '.join(SUPPORTED_CLI_VERSIONS)}"
                )
            self._version_checked = True

    def _run(self, args: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
        """One call in its own process group: on timeout, Ctrl-C or any error the whole group
        (the program and whatever it started) is ended, never left running; and the kernel
        kills the program when faice itself dies (SIGKILL included), through util-linux's
        ``setpriv --pdeathsig`` where it exists."""
        limit = call_timeout(self.timeout)
        try:
            process = subprocess.Popen(
                [*_die_with_faice(), self.program, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True, pass_fds=pass_fds,
            )
        except OSError as exc:
            raise ConnectorFailure(f"cannot run {self.program}: {exc.strerror or exc}") from None
        try:
            stdout, stderr = self._output(process, limit, args[0])
        except BaseException:
            _end_group(process)
            raise
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if result.returncode != 0:
            raise ConnectorFailure(_failure_text(self.command, args[0], result))
        return result

    def _output(self, process: subprocess.Popen, limit: float, subcommand: str) -> tuple[str, str]:
        """The program's stdout and stderr once it ends; raises at the time limit or at cancel
        (the caller then ends its group)."""
        deadline = time.monotonic() + limit
        while True:
            try:
                return process.communicate(timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:  # retrying communicate() loses no output
                if self.cancel is not None and self.cancel.is_set():
                    raise TransferCancelled("cancelled (the run is stopping)") from None
                if time.monotonic() >= deadline:
                    raise ConnectorFailure(
                        f"{self.command} {subcommand} did not finish within {limit:g} s and was stopped "
                        f"(set {TIMEOUT_VARIABLE} to allow longer)"
                    ) from None

    def _call(self, operation: str, access, path: Path | None, listing: Listing | None) -> None:
        self._check_version()
        with ExitStack() as stack:
            access_file = stack.enter_context(_json_file(dict(access)))
            args = [operation, access_file.path]
            files = [access_file]
            if path is not None:
                args.append(str(path))
            base = operation.removesuffix("-validate")
            if listing is not None and base in _DIR_OPERATIONS:
                files.append(stack.enter_context(_json_file(listing)))
                args.append(f"--listing={files[-1].path}")
            self._run(args, pass_fds=tuple(f.fd for f in files if f.fd is not None))

    # ---------------------------------------------------------------- the connector API

    def validate(self, access, operation, listing=None):
        self._call(f"{operation}-validate", access, None, listing if operation != "mount-dir" else None)

    def receive_file(self, access, dest: Path, progress: Progress) -> None:
        self._call("receive-file", access, dest, None)
        progress.advance(dest.stat().st_size if dest.exists() else 0)

    def receive_dir(self, access, dest: Path, listing: Listing | None, progress: Progress) -> None:
        self._call("receive-dir", access, dest, listing)

    def send_file(self, access, src: Path, progress: Progress) -> None:
        self._call("send-file", access, src, None)
        progress.advance(src.stat().st_size)

    def send_dir(self, access, src: Path, listing: Listing | None, progress: Progress) -> None:
        self._call("send-dir", access, src, listing)

    def mount_dir(self, access, mountpoint: Path, writable: bool) -> None:
        self._call("mount-dir", access, mountpoint, None)

    def umount_dir(self, mountpoint: Path) -> None:
        self._check_version()
        self._run(["umount-dir", str(mountpoint)])


def call_timeout(session_timeout: float | None) -> float:
    """Seconds one program call may take: $FAICE_CONNECTOR_TIMEOUT, else the session's
    timeout, else :data:`DEFAULT_CALL_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            raise ConnectorFailure(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds") from None
        if value <= 0:
            raise ConnectorFailure(f"{TIMEOUT_VARIABLE}={text!r} must be a positive number of seconds")
        return value
    return float(session_timeout) if session_timeout else DEFAULT_CALL_TIMEOUT


def _die_with_faice() -> list[str]:
    """The prefix that makes the program receive SIGKILL when faice dies (Linux)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM the program's process group, SIGKILL it after a grace period, reap it."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.communicate(timeout=wait)
            if sig == signal.SIGKILL or _group_gone(process.pid):
                return
        except subprocess.TimeoutExpired:
            continue
    _group_gone(process.pid)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class _HandedFile:
    """Where the program reads a JSON document: ``path``, and the descriptor it inherits."""

    path: str
    fd: int | None


@contextmanager
def _json_file(data) -> Iterator[_HandedFile]:
    """``data`` as JSON for one program call, gone afterwards whatever happens.

    An anonymous memory file (``memfd``) that the program inherits and opens as
    ``/dev/fd/N``: never on disk, freed when faice and the program are gone, even after a
    SIGKILL. Without memfd: a 0600 file in a private temp dir owned by this process, which
    the next start removes when faice was killed."""
    text = json.dumps(data).encode("utf-8")
    if hasattr(os, "memfd_create") and os.path.isdir("/dev/fd"):
        fd = os.memfd_create("faice-connector", os.MFD_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text)
            yield _HandedFile(f"/dev/fd/{fd}", fd)
        finally:
            os.close(fd)
        return
    from faice.runtime.tempdirs import owned_tempdir, remove_run_tempdir

    directory = owned_tempdir("faice-connector-")
    try:
        path = directory / "data.json"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(text)
        yield _HandedFile(str(path), None)
    finally:
        remove_run_tempdir(directory)


def _failure_text(command: str, subcommand: str, result: subprocess.CompletedProcess) -> str:
    """Upstream's rule: the connector's stderr, else its stdout, else the exit status."""
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = str(-result.returncode)
        status = f"killed by signal {name}"
    else:
        status = f"exit code {result.returncode}"
    stderr, stdout = result.stderr.strip(), result.stdout.strip()
    if stderr:
        detail = stderr
    elif stdout:
        detail = f"connector stderr was empty; its stdout: {stdout}"
    else:
        detail = "no message"
    return f"{command} {subcommand} failed ({status}): {detail}"
