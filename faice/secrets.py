"""Protected values and their redaction (docs/red-reference.md, "Secrets").

A value is protected when it sits under a protected key (``password``, ``privateKey``,
``passphrase``, ``secretAccessKey``, ``sessionToken`` or any key starting with ``_``) or was
filled into a ``{{variable}}``. Every protected value is registered with the process-wide
:data:`REDACTOR`, and everything faice prints or writes passes through it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

PROTECTED_KEYS = frozenset({"password", "privateKey", "passphrase", "secretAccessKey", "sessionToken"})
MASK = "********"
VARIABLE_MIN_LENGTH = 4
# A protected value shorter than this cannot be hidden without destroying every message that
# happens to contain those characters (a password "x" would mask every x); it is not masked,
# and docs/security.md says so. Any real secret is longer.
SECRET_MIN_LENGTH = 3


def is_protected_key(key: object) -> bool:
    return isinstance(key, str) and (key in PROTECTED_KEYS or key.startswith("_"))


def normalise_key(key: str) -> str:
    """``_username`` → ``username``: the underscore only marks the value as protected."""
    return key[1:] if key.startswith("_") and len(key) > 1 else key


def normalise_protected_keys(data: Any) -> Any:
    """A copy of ``data`` with every ``_key`` renamed to ``key`` (recursively)."""
    if isinstance(data, dict):
        return {
            (normalise_key(k) if isinstance(k, str) else k): normalise_protected_keys(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [normalise_protected_keys(v) for v in data]
    return data


def protected_values(data: Any, *, inside: bool = False) -> Iterator[str]:
    """Every scalar below a protected key, as text."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from protected_values(value, inside=inside or is_protected_key(key))
    elif isinstance(data, list):
        for value in data:
            yield from protected_values(value, inside=inside)
    elif inside and data is not None and not isinstance(data, bool):
        yield str(data)


class Redactor:
    """Replaces every registered secret, and its JSON-escaped form, with ``********``.

    A batch gets a redactor of its own (its secrets only), so one user's output is never
    masked with, or checked against, another user's secrets; ``parent`` adds the process's
    own secrets (a local run's variables, the agency's database password)."""

    def __init__(self, values: Iterable[object] = (), *, parent: Redactor | None = None) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.parent = parent
        self.add_all(values)

    def add(self, *values: object) -> None:
        self.add_all(values)

    def add_variable(self, value: object) -> None:
        """A filled ``{{variable}}``: protected, but a value shorter than
        :data:`VARIABLE_MIN_LENGTH` (a port like ``22``, a host ``h``) would mask unrelated text
        in every message, so it is masked only when it also sits under a protected key (where
        :func:`protected_values` registers it regardless of length)."""
        self.add_all([value], min_length=VARIABLE_MIN_LENGTH)

    def add_all(self, values: Iterable[object], *, min_length: int = SECRET_MIN_LENGTH) -> None:
        with self._lock:
            for value in values:
                if value is None or isinstance(value, bool):
                    continue
                text = str(value)
                if len(text.strip()) < min_length:
                    continue
                variants = {text, json.dumps(text)[1:-1], repr(text)[1:-1]}
                self._secrets.update(v for v in variants if v.strip())
            self._pattern = None

    def __bool__(self) -> bool:
        return bool(self._secrets) or bool(self.parent)

    def values(self) -> list[str]:
        """Every registered secret: handed to worker processes (Slurm tasks) so they mask alike."""
        with self._lock:
            own = set(self._secrets)
        return sorted(own | set(self.parent.values() if self.parent else ()))

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._secrets:
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
            return self._pattern

    def redact(self, text: str) -> str:
        pattern = self._compiled()
        if pattern and text:
            text = pattern.sub(MASK, text)
        return self.parent.redact(text) if self.parent is not None else text

    def redact_bytes(self, data: bytes) -> bytes:
        if not self:
            return data
        return self.redact(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def redact_data(self, data: Any) -> Any:
        """A copy of a JSON-like structure with secrets masked in every string."""
        if isinstance(data, str):
            return self.redact(data)
        if isinstance(data, dict):
            return {self.redact_data(k): self.redact_data(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.redact_data(v) for v in data]
        return data

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._pattern = None


REDACTOR = Redactor()  # the process's own: a local user's variables, a server's credentials


def batch_redactor(*documents: Any, parent: Redactor | None = None) -> Redactor:
    """A redactor for one batch: every protected value in ``documents`` (its inputs, outputs,
    container settings), on top of ``parent``."""
    values: list[str] = []
    for document in documents:
        values.extend(protected_values(document))
    return Redactor(values, parent=parent)


class StreamRedactor:
    """Masks secrets in a byte stream written chunk by chunk, never holding the whole stream.

    A secret may be split across chunks (a container's log arrives in frames of any size),
    so the last ``longest secret - 1`` bytes are held back until the next chunk shows whether
    they start a secret; every byte before that is final and goes to ``sink`` at once. Memory
    is one chunk plus that carry-over, whatever the stream's length; the clear text never
    reaches ``sink``. The secrets are those of ``redactor`` (and its parents) when created.
    """

    def __init__(self, redactor: Redactor | None, sink: Callable[[bytes], object]) -> None:
        self._sink = sink
        values = sorted({v.encode("utf-8", "surrogateescape") for v in (redactor.values() if redactor else ())},
                        key=len, reverse=True)
        self._pattern: re.Pattern[bytes] | None = (
            re.compile(b"|".join(re.escape(v) for v in values)) if values else None)
        self._hold = max((len(v) for v in values), default=1) - 1
        self._mask = MASK.encode("ascii")
        self._carry = b""
        self._closed = False

    def write(self, chunk: bytes) -> int:
        """Mask and pass on what is final; keep the possible start of a secret."""
        if self._closed:
            raise ValueError("write to a closed StreamRedactor")
        if not chunk:
            return 0
        if self._pattern is None:
            self._sink(chunk)
            return len(chunk)
        data = self._carry + bytes(chunk)
        # A secret starting before ``cut`` lies wholly inside ``data``: its masking is final.
        cut = len(data) - self._hold
        out, position = self._masked(data, cut)
        end = max(cut, position)
        out.append(data[position:end])
        self._carry = data[end:]
        self._emit(out)
        return len(chunk)

    def _masked(self, data: bytes, cut: int | None) -> tuple[list[bytes], int]:
        assert self._pattern is not None
        out: list[bytes] = []
        position = 0
        for match in self._pattern.finditer(data):
            if cut is not None and match.start() >= cut:
                break
            out.append(data[position:match.start()])
            out.append(self._mask)
            position = match.end()
        return out, position

    def _emit(self, parts: list[bytes]) -> None:
        data = b"".join(parts)
        if data:
            self._sink(data)

    def flush(self) -> None:
        """Nothing to do: held-back bytes may still become a secret; :meth:`close` ends them."""

    def close(self) -> None:
        """The stream ended: mask and pass on the held-back bytes."""
        if self._closed:
            return
        self._closed = True
        if self._carry and self._pattern is not None:
            out, position = self._masked(self._carry, None)
            out.append(self._carry[position:])
            self._emit(out)
        self._carry = b""

    def __enter__(self) -> StreamRedactor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedactingFile:
    """A binary file that only ever receives masked bytes (``stdout.txt``, ``stderr.txt``).

    ``with RedactingFile(path, redactor) as out: out.write(chunk)`` — the reusable way to put
    a stream on disk: a kill at any moment leaves at most the held-back tail unwritten, never
    a secret in the clear."""

    def __init__(self, path: str | os.PathLike[str], redactor: Redactor | None, *, append: bool = False) -> None:
        self._handle = open(path, "ab" if append else "wb")  # noqa: SIM115 - closed by close()
        self._stream = StreamRedactor(redactor, self._handle.write)

    def write(self, chunk: bytes) -> int:
        return self._stream.write(chunk)

    def flush(self) -> None:
        """Push what is final to the file (readers such as ``faice logs -f`` see it)."""
        self._handle.flush()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._handle.close()

    def __enter__(self) -> RedactingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
