"""Hostile archives are refused by faice's own member rules (issue 12, item 9).

Each attack archive is built here in Python; every test asserts the refusal *and* that
nothing outside the destination was created or changed (a canary file next to it). The
rules do not depend on the interpreter's tarfile filters, so this file also runs under
Debian 12's own Python 3.11.2, which has none (``.venv311/bin/python -m pytest``).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from faice.connectors.archives import ArchiveError, extract_archive

CANARY = b"canary: must never change\n"


# ---------------------------------------------------------------------- building archives


def _info(name: str, *, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "",
          mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    if kind == tarfile.REGTYPE:
        data = data or b""
        info.size = len(data)
    return info, data


def _dir(name: str, mode: int = 0o755):
    return _info(name, kind=tarfile.DIRTYPE, mode=mode)


def _sym(name: str, target: str):
    return _info(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def _hard(name: str, target: str):
    return _info(name, kind=tarfile.LNKTYPE, link=target)


def write_tar(path: Path, members, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as bundle:
        for info, data in members:
            bundle.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def write_zip(path: Path, members) -> Path:
    """``members``: (name, data, unix mode incl. file type or 0)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode:
                info.external_attr = mode << 16
            bundle.writestr(info, data)
    return path


def realpath_limit_attack(dest: Path, up: int = 1) -> list:
    """CVE-2025-4517: symlinks that expand beyond PATH_MAX, so ``os.path.realpath`` stops
    resolving and tarfile's ``data`` filter waves the rest through. ``escape`` ends ``up``
    levels above ``dest``; through it a hard link to ``flag`` is overwritten and ``newfile``
    created there."""
    steps = "abcdefghijklmnop"
    max_path = os.pathconf(dest.parent, "PC_PATH_MAX")
    component = "d" * ((max_path - len(str(dest)) - 1) // (len(steps) + 1))
    members, path = [], ""
    for step in steps:
        members.append(_dir(os.path.join(path, component), mode=0o777))
        members.append(_sym(os.path.join(path, step), component))
        path = os.path.join(path, component)
    linkpath = os.path.join(*steps, "l" * 254)
    members.append(_sym(linkpath, os.path.join(*[".."] * len(steps))))
    members.append(_sym("escape", os.path.join(linkpath, *[".."] * up)))
    members.append(_hard("flaglink", os.path.join("escape", "flag")))
    members.append(_info("flaglink", data=b"overwritten"))
    members.append(_info("escape/newfile", data=b"new"))
    return members


# ---------------------------------------------------------------------- the canary


class Place:
    """``outer/`` holds the canary files, the archive and ``dest/``."""

    def __init__(self, root: Path) -> None:
        self.outer = root / "outer"
        self.dest = self.outer / "dest"
        self.outer.mkdir()
        self.canary = self.outer / "canary.txt"
        self.flag = self.outer / "flag"
        for path in (self.canary, self.flag):
            path.write_bytes(CANARY)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, bytes | str]:
        """Everything outside ``dest`` (and the archive): names, kinds and contents."""
        seen: dict[str, bytes | str] = {}
        for path in sorted(self.outer.parent.rglob("*")):
            if path == self.dest or self.dest in path.parents or path.name.startswith("archive."):
                continue
            rel = path.relative_to(self.outer.parent).as_posix()
            seen[rel] = (f"-> {os.readlink(path)}" if path.is_symlink() else
                         path.read_bytes() if path.is_file() else "dir")
        return seen

    def assert_untouched(self) -> None:
        assert self.canary.read_bytes() == CANARY
        assert self.flag.read_bytes() == CANARY
        assert self.snapshot() == self.before


@pytest.fixture
def place(tmp_path) -> Place:
    return Place(tmp_path)


# ---------------------------------------------------------------------- tar attacks

TAR_ATTACKS: dict[str, tuple[Callable[[Place], list], str]] = {
    "parent-path": (lambda p: [_info("../canary.txt", data=b"evil")], r"'\.\.' would leave"),
    "nested-parent-path": (lambda p: [_dir("sub"), _info("sub/../../new.txt", data=b"evil")], r"'\.\.'"),
    "absolute-path": (lambda p: [_info(str(p.canary), data=b"evil")], "absolute path"),
    "symlink-escape": (lambda p: [_sym("link", ".."), _info("link/canary.txt", data=b"evil")],
                       "points outside the destination"),
    "absolute-symlink": (lambda p: [_sym("link", str(p.outer)), _info("link/new.txt", data=b"evil")],
                         "absolute target"),
    "symlink-chain-past-path-max": (lambda p: realpath_limit_attack(p.dest), "lies under the symbolic link 'a'"),
    "link-to-a-later-link": (lambda p: [_sym("a", "b/c"), _sym("b", "x")], "another link in the archive points"),
    "link-through-a-link": (lambda p: [_sym("b", "x"), _sym("a", "b/c")], "points through another link 'b'"),
    "empty-named-symlink": (lambda p: [_sym("", ".."), _info("x", data=b"evil")], "empty name"),
    "hardlink-escape": (lambda p: [_hard("hl", "../canary.txt"), _info("hl", data=b"evil")],
                        "only links to a regular file"),
    "absolute-hardlink": (lambda p: [_hard("hl", str(p.canary)), _info("hl", data=b"evil")],
                          "only links to a regular file"),
    "character-device": (lambda p: [_info("null", kind=tarfile.CHRTYPE)], "a character device"),
    "block-device": (lambda p: [_info("sda", kind=tarfile.BLKTYPE)], "a block device"),
    "fifo": (lambda p: [_info("pipe", kind=tarfile.FIFOTYPE)], "a FIFO"),
    "duplicate-name": (lambda p: [_info("x", data=b"1"), _info("x", data=b"2")], "holds this name twice"),
    "file-then-dir-through-file": (lambda p: [_info("x", data=b"1"), _info("x/y", data=b"2")],
                                   "not a directory"),
}


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_good_tar_extracts_exactly(tmp_path, compression):
    members = [
        _dir("top", mode=0o750),
        _info("top/run.sh", data=b"#!/bin/sh\necho hi\n", mode=0o755),
        _info("top/data.bin", data=os.urandom(300_000)),
        _dir("top/empty"),
        _sym("top/latest", "data.bin"),
        _sym("top/up", "../other/deep.txt"),
        _dir("other"),
        _info("other/deep.txt", data=b"deep"),
        _hard("other/same.bin", "top/data.bin"),
        _info("./dot/slash.txt", data=b"normalised"),
    ]
    archive = write_tar(tmp_path / f"archive.tar.{compression}", members, f"w:{compression}")
    dest = tmp_path / "dest"
    extract_archive(archive, dest, {"gz": "gztar", "bz2": "bztar", "xz": "xztar"}[compression])
    assert (dest / "top/run.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(dest / "top/run.sh", os.X_OK)
    assert (dest / "top/data.bin").read_bytes() == members[2][1]
    assert (dest / "top/empty").is_dir()
    assert os.readlink(dest / "top/latest") == "data.bin"
    assert (dest / "top/up").read_bytes() == b"deep"
    assert (dest / "other/same.bin").read_bytes() == members[2][1]
    assert (dest / "dot/slash.txt").read_bytes() == b"normalised"
    assert stat.S_IMODE((dest / "top").stat().st_mode) == 0o750


def test_plain_tar_and_format_by_content(tmp_path):
    archive = write_tar(tmp_path / "archive.tar", [_info("a.txt", data=b"plain")], "w")
    extract_archive(archive, tmp_path / "d1", "tar")
    assert (tmp_path / "d1/a.txt").read_bytes() == b"plain"
    xz = write_tar(tmp_path / "archive.tar.xz", [_info("b.txt", data=b"xz")], "w:xz")
    extract_archive(xz, tmp_path / "d2", "gztar")  # the declared compression may be wrong
    assert (tmp_path / "d2/b.txt").read_bytes() == b"xz"


@pytest.mark.parametrize("attack", sorted(TAR_ATTACKS))
def test_hostile_tar_is_refused_and_nothing_outside_changes(place, attack):
    build, message = TAR_ATTACKS[attack]
    archive = write_tar(place.outer / "archive.tar.gz", build(place))
    with pytest.raises(ArchiveError, match=message):
        extract_archive(archive, place.dest, "gztar")
    place.assert_untouched()
    assert not (place.outer / "new.txt").exists() and not (place.outer / "newfile").exists()


def test_setuid_setgid_sticky_and_group_write_are_stripped(tmp_path):
    archive = write_tar(tmp_path / "archive.tar.gz", [
        _info("suid", data=b"x", mode=0o4755),
        _info("sgid", data=b"x", mode=0o2775),
        _dir("sticky", mode=0o1777),
        _info("private", data=b"x", mode=0o000),
    ])
    dest = tmp_path / "dest"
    extract_archive(archive, dest, "gztar")
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "sgid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "sticky").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "private").stat().st_mode) == 0o600  # the owner can still clean up


def test_too_many_members(place):
    archive = write_tar(place.outer / "archive.tar.gz", [_info(f"f{i}", data=b"x") for i in range(11)])
    with pytest.raises(ArchiveError, match="more than 10 members"):
        extract_archive(archive, place.dest, "gztar", max_members=10)
    place.assert_untouched()


def test_tar_bigger_than_the_limit_is_refused_before_writing_it(place):
    archive = write_tar(place.outer / "archive.tar.gz", [_info("small", data=b"x" * 1000),
                                                          _info("big", data=b"\0" * 4_000_000)])
    with pytest.raises(ArchiveError, match="'big'.*more than 1000000 bytes"):
        extract_archive(archive, place.dest, "gztar", max_bytes=1_000_000)
    assert not (place.dest / "big").exists()
    place.assert_untouched()


def test_corrupt_tar_is_a_clear_error(tmp_path):
    bad = tmp_path / "archive.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(2000))
    with pytest.raises(ArchiveError, match="cannot read the tar archive"):
        extract_archive(bad, tmp_path / "dest", "gztar")


def test_writes_never_follow_a_link_already_in_dest(place):
    """Even a link planted in the destination beforehand is never written through."""
    place.dest.mkdir()
    (place.dest / "planted").symlink_to(place.outer)
    archive = write_tar(place.outer / "archive.tar.gz", [_info("planted/canary.txt", data=b"evil")])
    with pytest.raises(ArchiveError, match="not a directory"):
        extract_archive(archive, place.dest, "gztar")
    archive = write_tar(place.outer / "archive.tar.gz", [_info("planted", data=b"evil")])
    with pytest.raises(ArchiveError, match="exists already"):
        extract_archive(archive, place.dest, "gztar")
    place.assert_untouched()


# ---------------------------------------------------------------------- zip

ZIP_ATTACKS: dict[str, tuple[Callable[[Place], list], str]] = {
    "zip-slip": (lambda p: [("../canary.txt", b"evil", 0)], r"'\.\.' would leave"),
    "deep-zip-slip": (lambda p: [("a/b/../../../new.txt", b"evil", 0)], r"'\.\.'"),
    "absolute": (lambda p: [(str(p.canary), b"evil", 0)], "absolute path"),
    "symlink-escape": (lambda p: [("link", b"..", stat.S_IFLNK | 0o777), ("link/canary.txt", b"evil", 0)],
                       "points outside the destination"),
    "symlink-absolute": (lambda p: [("link", str(p.outer).encode(), stat.S_IFLNK | 0o777),
                                    ("link/new.txt", b"evil", 0)], "absolute target"),
    "device": (lambda p: [("dev", b"", stat.S_IFCHR | 0o666)], "a character device"),
    "fifo": (lambda p: [("pipe", b"", stat.S_IFIFO | 0o666)], "a FIFO"),
}


@pytest.mark.parametrize("attack", sorted(ZIP_ATTACKS))
def test_hostile_zip_is_refused_and_nothing_outside_changes(place, attack):
    build, message = ZIP_ATTACKS[attack]
    archive = write_zip(place.outer / "archive.zip", build(place))
    with pytest.raises(ArchiveError, match=message):
        extract_archive(archive, place.dest, "zip")
    place.assert_untouched()
    assert not (place.outer / "new.txt").exists()


def test_good_zip_extracts_exactly(tmp_path):
    data = os.urandom(100_000)
    archive = write_zip(tmp_path / "archive.zip", [
        ("dir/", b"", stat.S_IFDIR | 0o755),
        ("dir/run.sh", b"#!/bin/sh\n", stat.S_IFREG | 0o4755),
        ("dir/data.bin", data, 0),
        ("dir/latest", b"data.bin", stat.S_IFLNK | 0o777),
    ])
    dest = tmp_path / "dest"
    extract_archive(archive, dest, "zip")
    assert (dest / "dir/data.bin").read_bytes() == data
    assert stat.S_IMODE((dest / "dir/run.sh").stat().st_mode) == 0o755  # set-uid stripped, exec kept
    assert os.readlink(dest / "dir/latest") == "data.bin"


def test_zip_bomb_is_refused_by_the_size_limit(place):
    """64 MiB of zeros compress to ~64 KiB: refused from the headers, nothing big written."""
    archive = write_zip(place.outer / "archive.zip", [("zeros", b"\0" * (64 << 20), 0)])
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(ArchiveError, match="unpacks to 67108864 bytes, more than the limit"):
        extract_archive(archive, place.dest, "zip", max_bytes=16 << 20)
    assert sum(p.stat().st_size for p in place.dest.rglob("*") if p.is_file()) == 0
    place.assert_untouched()


def test_zip_that_lies_about_its_size_is_stopped(place):
    """A member whose header understates its size is cut at the header's size (CRC fails)."""
    archive = write_zip(place.outer / "archive.zip", [("zeros", b"\0" * (4 << 20), 0)])
    raw = bytearray(archive.read_bytes())
    real = (4 << 20).to_bytes(4, "little")
    raw[:] = raw.replace(real, (1000).to_bytes(4, "little"))  # local header and central directory
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="zeros"):
        extract_archive(archive, place.dest, "zip")
    assert sum(p.stat().st_size for p in place.dest.rglob("*") if p.is_file()) <= 1000
    place.assert_untouched()


def test_zip_too_many_members(place):
    archive = write_zip(place.outer / "archive.zip", [(f"f{i}", b"x", 0) for i in range(11)])
    with pytest.raises(ArchiveError, match="11 members, more than the limit of 10"):
        extract_archive(archive, place.dest, "zip", max_members=10)
    place.assert_untouched()


def test_unknown_format(tmp_path):
    with pytest.raises(ArchiveError, match="unknown archive format 'rar'"):
        extract_archive(tmp_path / "x", tmp_path / "d", "rar")


# ---------------------------------------------------------------------- end to end: nginx


@pytest.mark.http
def test_red_connector_http_archive_refuses_the_path_max_chain(http_server, tmp_path):
    """The CVE-2025-4517 tar served by the real nginx as a ``red-connector-http-archive``
    input: refused with the RED key path and the member, and the canary two levels above
    the staging directory is neither overwritten nor joined by a new file."""
    from faice.connectors.staging import ConnectorRequest, StagingSession
    from faice.errors import ConnectorError

    prefix = f"sec-{uuid.uuid4().hex[:10]}"
    served = http_server.root / prefix
    served.mkdir()
    try:
        workdir = tmp_path / "w"
        workdir.mkdir()
        flag = tmp_path / "flag"
        flag.write_bytes(CANARY)
        # dest is w/faice-staging-*/.part-*/<name>: 3 levels under w, so 4 "up" reach tmp_path
        fake_dest = workdir / ("s" * 22) / ("p" * 40) / "evil.tar"
        write_tar(served / "evil.tar", realpath_limit_attack(fake_dest, up=4), "w")
        access = {"url": f"{http_server.url}/{prefix}/evil.tar", "archiveFormat": "tar"}
        request = ConnectorRequest("batches[0].inputs.data", "red-connector-http-archive", access)
        with StagingSession(workdir) as session, pytest.raises(ConnectorError) as caught:
            session.stage_in(request, "Directory")
        assert "batches[0].inputs.data" in caught.value.message
        assert "lies under the symbolic link 'a'" in caught.value.message
        assert flag.read_bytes() == CANARY
        assert sorted(p.name for p in tmp_path.iterdir()) == ["flag", "w"]
    finally:
        shutil.rmtree(served, ignore_errors=True)


@pytest.mark.http
def test_red_connector_http_archive_good_tar_on_this_interpreter(http_server, tmp_path):
    """A plain tar input works on every supported Python (Debian 12's 3.11.2 failed)."""
    from faice.connectors.staging import ConnectorRequest, StagingSession

    prefix = f"sec-{uuid.uuid4().hex[:10]}"
    served = http_server.root / prefix
    served.mkdir()
    try:
        write_tar(served / "good.tar.bz2", [_dir("d"), _info("d/x.txt", data=b"hello"), _sym("d/y", "x.txt")],
                  "w:bz2")
        access = {"url": f"{http_server.url}/{prefix}/good.tar.bz2", "archiveFormat": "bztar"}
        with StagingSession(tmp_path / "w") as session:
            got = session.stage_in(ConnectorRequest("i", "red-connector-http-archive", access), "Directory")
            assert (got / "d/x.txt").read_bytes() == b"hello"
            assert (got / "d/y").read_bytes() == b"hello" and os.readlink(got / "d/y") == "x.txt"
    finally:
        shutil.rmtree(served, ignore_errors=True)
