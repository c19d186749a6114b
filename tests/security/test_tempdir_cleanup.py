"""Another local user cannot steer faice's start-up cleanup (issue 19).

Every ``faice exec`` removes the ``$TMPDIR/faice-run-*`` (``faice-ssh-*``, ``faice-sshfs-*``,
``faice-check-*``, ``faice-connector-*``) dirs whose owner process is gone. ``$TMPDIR`` is
shared: here a real second user (created with useradd when missing, run with setpriv) plants
such dirs naming a dead process, with links to root's files and a directory it keeps
swapping for a link. Root's faice must leave them and root's files alone, and still remove
its own dirs left by a killed run.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from faice.runtime.tempdirs import owned_tempdir, remove_stale_tempdirs

PLANTER = "faice-planter"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"


@pytest.fixture(scope="module")
def planter() -> pwd.struct_passwd:
    """A second, unprivileged local user."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the attack is another user against root's faice")
    try:
        return pwd.getpwnam(PLANTER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PLANTER],
                       check=True, capture_output=True, timeout=60)
        return pwd.getpwnam(PLANTER)


@pytest.fixture
def shared_tmp():
    """A world-writable sticky directory like /tmp (pytest's own tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="faice-test-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(user: pwd.struct_passwd, script: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--",
                             SYSTEM_PYTHON, "-c", textwrap.dedent(script)], **kwargs)


def dead_owner() -> str:
    """The owner token of a faice process that is gone."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return f"{socket.gethostname()}:{done.stdout.strip()}:1"


def victim(shared_tmp: Path) -> Path:
    """Root's files: a directory (0755) with a file in it."""
    root = shared_tmp / "root-data"
    root.mkdir()
    root.chmod(0o755)
    (root / "precious.txt").write_text("root's data\n")
    (root / "precious.txt").chmod(0o644)
    return root


def assert_untouched(root: Path) -> None:
    assert (root / "precious.txt").read_text() == "root's data\n"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "precious.txt").stat().st_mode) == 0o644


def test_planted_dirs_and_links_are_left_alone(planter, shared_tmp):
    data = victim(shared_tmp)
    rundir = shared_tmp / "root-run"
    rundir.mkdir()
    (rundir / "run.json").write_text(json.dumps({"runId": "r", "state": "succeeded", "batches": []}))
    plant = as_user(planter, f"""
        import os
        base = {str(shared_tmp)!r}
        for prefix in ("faice-run-", "faice-ssh-", "faice-sshfs-", "faice-check-", "faice-connector-"):
            d = os.path.join(base, prefix + "planted")
            os.mkdir(d, 0o700)
            open(os.path.join(d, "owner"), "w").write({dead_owner()!r})
            open(os.path.join(d, "outdir"), "w").write({str(rundir)!r})
            open(os.path.join(d, "mine.txt"), "w").write("the planter's file")
            os.symlink({str(data)!r}, os.path.join(d, "link-to-root-data"))
        os.symlink({str(data)!r}, os.path.join(base, "faice-run-link"))
        os.mkdir(os.path.join(base, "faice-run-open"), 0o777)
        open(os.path.join(base, "faice-run-open", "owner"), "w").write({dead_owner()!r})
    """)
    assert plant.wait(30) == 0
    own = owned_tempdir("faice-run-", outdir=None)  # this user's: a dead owner's is removed below
    moved = shared_tmp / own.name
    own.rename(moved)
    (moved / "owner").write_text(dead_owner())
    removed = remove_stale_tempdirs(shared_tmp, on_dead_run=lambda outdir, owner: (outdir / "run.json").write_text("{}"))
    assert removed == [moved] and not moved.exists()
    for prefix in ("faice-run-", "faice-ssh-", "faice-sshfs-", "faice-check-", "faice-connector-"):
        planted = shared_tmp / f"{prefix}planted"
        assert (planted / "mine.txt").read_text() == "the planter's file", prefix
        assert stat.S_IMODE(planted.stat().st_mode) == 0o700 and planted.stat().st_uid == planter.pw_uid
    assert (shared_tmp / "faice-run-link").is_symlink() and (shared_tmp / "faice-run-open" / "owner").exists()
    assert json.loads((rundir / "run.json").read_text())["state"] == "succeeded", "another user's outdir file is no order"
    assert_untouched(data)


def test_a_directory_swapped_for_a_link_during_the_cleanup(planter, shared_tmp):
    """The planter keeps swapping ``faice-run-race/d`` between a real directory and a link to
    root's data while root's cleanup runs again and again (by path, chmod and unlink would
    follow the link)."""
    data = victim(shared_tmp)
    stop = shared_tmp / "stop"
    racer = as_user(planter, f"""
        import os
        base, data, stop = {str(shared_tmp)!r}, {str(data)!r}, {str(stop)!r}
        top = os.path.join(base, "faice-run-race")
        while not os.path.exists(stop):
            try:
                os.makedirs(os.path.join(top, "d"), exist_ok=True)
                with open(os.path.join(top, "owner"), "w") as f:
                    f.write({dead_owner()!r})
                os.rename(os.path.join(top, "d"), os.path.join(top, "real"))
                os.symlink(data, os.path.join(top, "d"))
                os.unlink(os.path.join(top, "d"))
                os.rename(os.path.join(top, "real"), os.path.join(top, "d"))
            except OSError:
                pass
    """)
    try:
        deadline = time.monotonic() + 6
        rounds = 0
        while time.monotonic() < deadline:
            remove_stale_tempdirs(shared_tmp)
            rounds += 1
    finally:
        stop.touch()
        racer.wait(30)
    assert rounds > 100
    assert_untouched(data)
    assert (shared_tmp / "faice-run-race").stat().st_uid == planter.pw_uid


@pytest.mark.docker
def test_faice_exec_start_leaves_another_users_dirs(planter, shared_tmp, test_image, tmp_path):
    """The real trigger: the cleanup at the start of ``faice exec`` (TMPDIR shared)."""
    data = victim(shared_tmp)
    plant = as_user(planter, f"""
        import os
        d = os.path.join({str(shared_tmp)!r}, "faice-run-planted")
        os.mkdir(d, 0o700)
        open(os.path.join(d, "owner"), "w").write({dead_owner()!r})
        open(os.path.join(d, "mine.txt"), "w").write("the planter's file")
        os.symlink({str(data)!r}, os.path.join(d, "link"))
    """)
    assert plant.wait(30) == 0
    leftover = subprocess.run([sys.executable, "-c", "from faice.runtime.tempdirs import owned_tempdir; "
                               "print(owned_tempdir('faice-run-'))"], capture_output=True, text=True, check=True,
                              env={**os.environ, "TMPDIR": str(shared_tmp)})
    own = Path(leftover.stdout.strip())
    assert own.is_dir(), "the dir of a faice process that is gone"
    red = tmp_path / "red.json"
    red.write_text(json.dumps({
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["true"], "inputs": {}, "outputs": {}},
        "inputs": {}, "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": test_image}}},
        "execution": {"engine": "ccfaice", "settings": {}}}))
    done = subprocess.run([sys.executable, "-m", "faice", "exec", str(red), "--outdir", str(tmp_path / "run"),
                           "--disable-pull", "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(shared_tmp)})
    assert done.returncode == 0, done.stderr
    assert not own.exists(), "this user's leftover is removed"
    assert (shared_tmp / "faice-run-planted" / "mine.txt").read_text() == "the planter's file"
    assert_untouched(data)
