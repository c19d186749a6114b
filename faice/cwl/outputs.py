"""Collect a batch's outputs by glob in its working directory (``/cc/outputs`` on the host).

CWL glob semantics: the pattern is relative to the working directory; a ``File`` output
keeps only regular files, a ``Directory`` output only directories. One match is the output;
no match fails the batch unless the type is optional (``File?``); several matches fail
(``missing-output``) — upstream failed even optional outputs on ambiguity, and so does faice,
because silently picking one would record the wrong file.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class CollectedOutput:
    key: str
    kind: str  # File, Directory, stdout, stderr (without "?")
    optional: bool
    glob: str
    path: Path | None
    problem: str | None = None

    def record(self, container_root: Path, container_dir: str) -> dict[str, Any]:
        """The upstream-shaped output entry, with size and sha256 for files."""
        entry: dict[str, Any] = {"class": self.kind + ("?" if self.optional else ""), "glob": self.glob}
        if self.path is None:
            entry["path"] = None
            return entry
        try:
            relative = self.path.relative_to(container_root)
            entry["path"] = f"{container_dir}/{relative.as_posix()}"
        except ValueError:
            entry["path"] = str(self.path)
        entry["hostPath"] = str(self.path)
        if self.path.is_file():
            entry["size"], entry["sha256"] = file_digest(self.path)
        else:
            entry["size"] = tree_size(self.path)
        return entry


def file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def collect(
    workdir: Path,
    globs: dict[str, str],
    types: dict[str, str],
    streams: dict[str, Path],
) -> list[CollectedOutput]:
    """One :class:`CollectedOutput` per cli output; ``problem`` is set where the batch fails.

    ``streams`` maps ``stdout``/``stderr`` to the captured stream files, used for outputs of
    that type when ``cli.stdout``/``cli.stderr`` named no file.
    """
    found = []
    for key, raw_type in types.items():
        optional = raw_type.endswith("?")
        kind = raw_type.rstrip("?")
        pattern = globs.get(key, "")
        if kind in ("stdout", "stderr"):
            path = (workdir / pattern) if pattern else streams.get(kind)
            ok = path is not None and path.is_file()
            found.append(
                CollectedOutput(key, kind, False, pattern or f"<{kind}>", path if ok else None,
                                None if ok else f"output {key}: the captured {kind} file is missing")
            )
            continue
        matches, escaping = _matches(workdir, pattern, kind)
        problem = None
        path = None
        if pattern.startswith("/") or ".." in pattern.split("/"):
            problem = (f"output {key}: glob {pattern!r} leaves /cc/outputs (an absolute path or '..'); "
                       "outputs are only collected inside it")
        elif escaping:
            names = ", ".join(escaping[:5])
            problem = (f"output {key}: glob {pattern!r} matched {names}, outside /cc/outputs (a symbolic link "
                       f"or '..'); refusing to collect it: outputs never include host files")
        elif len(matches) == 1:
            path = matches[0]
        elif len(matches) > 1:
            names = ", ".join(sorted(p.relative_to(workdir).as_posix() for p in matches)[:5])
            problem = f"output {key}: glob {pattern!r} is ambiguous: {len(matches)} matches ({names})"
        elif not optional:
            problem = f"output {key}: no {kind.lower()} matches glob {pattern!r} in /cc/outputs"
        found.append(CollectedOutput(key, kind, optional, pattern, path, problem))
    return found


def _matches(workdir: Path, pattern: str, kind: str) -> tuple[list[Path], list[str]]:
    """The glob's hits of the wanted kind, and those that are links out of ``workdir``
    (named by their place in ``workdir`` and the link's own text, both the batch's)."""
    if not pattern:
        return [], []
    root = os.path.realpath(workdir)
    hits, escaping = [], []
    for hit in _confined_glob(str(workdir), root, pattern):
        wanted = (kind == "File" and os.path.isfile(hit)) or (kind == "Directory" and os.path.isdir(hit))
        real = os.path.realpath(hit)
        if wanted and not _inside(real, root):
            # a symbolic link out of the working directory is never an output: reading it
            # would copy a host file (its digest, its upload) into the batch's results
            escaping.append(f"{os.path.relpath(hit, workdir)} -> {os.readlink(hit) if os.path.islink(hit) else '?'}")
            continue
        if wanted:
            hits.append(Path(hit))
    return hits, escaping


def _confined_glob(workdir: str, root: str, pattern: str) -> list[str]:
    """``glob.glob(workdir/pattern)`` that never looks outside ``workdir``: an absolute
    pattern or a ``..`` matches nothing, and no directory is listed whose real path leaves it
    (a link the batch made to a host directory, a ``$(inputs.x)`` naming one), so neither a
    message nor the time taken tells anything of the host's file names."""
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    if pattern.startswith("/") or ".." in parts or not parts:
        return []
    current = [workdir]
    for depth, part in enumerate(parts):
        found = []
        for base in current:
            if depth and not (os.path.isdir(base) and _inside(os.path.realpath(base), root)):
                continue  # never list (or look into) a directory outside the working directory
            if not glob.has_magic(part):
                if os.path.lexists(os.path.join(base, part)):
                    found.append(os.path.join(base, part))
                continue
            try:
                names = os.listdir(base)
            except OSError:
                continue
            hidden = part.startswith(".")  # as glob: '*' does not match dot files
            found += [os.path.join(base, n) for n in sorted(fnmatch.filter(names, part)) if hidden or not n.startswith(".")]
        current = found
    return current


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root + os.sep)
