"""``mount: true``: the remote directory mounted on the host with sshfs.

Every access value goes into a private ssh config file, never into argv or sshfs's ``-o``
list; secrets go through stdin or 0600 files in an owned scratch dir removed right after the
mount (or at the next start after a SIGKILL). Host keys follow the same file and policy as
the SFTP transfers (OpenSSH reads the entries those record).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from faice.connectors import ConnectorFailure, TransientFailure
from faice.connectors.scratch import private_dir
from faice_connectors.ssh import access as settings


def require_programs() -> None:
    missing = [p for p in ("sshfs",) if shutil.which(p) is None]
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        missing.append("fusermount3")
    if missing:
        raise ConnectorFailure(f"mounting needs {' and '.join(missing)} on this host (apt install sshfs fuse3)")


def _fuse_allows_other() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        return any(line.strip() == "user_allow_other" for line in Path("/etc/fuse.conf").read_text().splitlines())
    except OSError:
        return False


SSHFS_HOST_ALIAS = "faice-sshfs-target"


def _config_value(text: str) -> str:
    """One ssh_config argument: quoted; values were checked to hold no quote or newline."""
    if any(ch in text for ch in '"\n\r\0'):
        raise ConnectorFailure(f"cannot pass {text!r} to ssh")
    return '"' + text.replace("%", "%%") + '"'


def mount_sshfs(access, remote: str, mountpoint: Path, writable: bool, *, timeout: float) -> None:
    """Mount on the host with sshfs.

    Every access value goes into a private ssh config file (``-F``), never into sshfs's
    ``-o`` list (FUSE splits that at commas, so a value could add options such as
    ``ssh_command=``) nor into argv (where ``ps`` shows it). The password goes through
    stdin; a key through a 0600 copy. The scratch dir is removed once mounted.
    """
    settings.check_access_values(access)
    auth = access["auth"]
    host, port = access["host"], int(access.get("port", 22))
    policy, known_hosts = settings.policy(access), settings.known_hosts(access)
    config = [f"HostName {_config_value(host)}", f"User {_config_value(auth['username'])}", f"Port {port}",
              "ServerAliveInterval 15", f"ConnectTimeout {int(timeout)}"]
    if policy == "ignore":
        config += ["StrictHostKeyChecking no", "UserKnownHostsFile /dev/null"]
    else:
        known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        config += [f"StrictHostKeyChecking {'yes' if policy == 'strict' else 'accept-new'}",
                   f"UserKnownHostsFile {_config_value(str(known_hosts))}", "GlobalKnownHostsFile /dev/null"]
    ciphers = access.get("ciphers")
    if ciphers:
        config.append(f"Ciphers {ciphers if isinstance(ciphers, str) else ','.join(ciphers)}")
    fuse_options = [] if writable else ["ro"]
    if _fuse_allows_other():
        fuse_options.append("allow_other")  # the container's user is not the host user that mounted
    stdin_data = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    scratch = private_dir("faice-sshfs-")
    try:
        if "password" in auth:
            fuse_options.append("password_stdin")
            config += ["PreferredAuthentications password,keyboard-interactive", "PubkeyAuthentication no"]
            stdin_data = auth["password"] + "\n"
        else:
            key_file = scratch / "key"
            _write_private(key_file, settings.key_text(auth["privateKey"]))
            config += [f"IdentityFile {_config_value(str(key_file))}", "IdentitiesOnly yes",
                       "PasswordAuthentication no", "KbdInteractiveAuthentication no"]
            if auth.get("passphrase"):
                # ssh asks for the passphrase through SSH_ASKPASS: a helper that prints a
                # 0600 file; the environment holds only the file's path.
                secret = scratch / "passphrase"
                _write_private(secret, auth["passphrase"] + "\n")
                helper = scratch / "askpass"
                helper.write_text(f"#!/bin/sh\nexec cat '{secret}'\n")
                helper.chmod(0o700)
                env.update(SSH_ASKPASS=str(helper), SSH_ASKPASS_REQUIRE="force", DISPLAY=env.get("DISPLAY", ":0"))
            else:
                config.append("BatchMode yes")
        config_file = scratch / "ssh_config"
        _write_private(config_file, f"Host {SSHFS_HOST_ALIAS}\n" + "".join(f"  {line}\n" for line in config))
        command = ["sshfs", "-F", str(config_file), f"{SSHFS_HOST_ALIAS}:{remote}", str(mountpoint)]
        if fuse_options:
            command += ["-o", ",".join(fuse_options)]
        try:
            result = subprocess.run(command, input=stdin_data, capture_output=True, text=True, timeout=timeout + 10,
                                    env=env, start_new_session=True)
        except subprocess.TimeoutExpired:
            unmount(mountpoint, missing_ok=True)
            raise TransientFailure(f"sshfs did not mount {host}:{remote} within {int(timeout + 10)} s") from None
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip()
            if "REMOTE HOST IDENTIFICATION HAS CHANGED" in message or "Host key verification failed" in message:
                if "CHANGED" in message:
                    message = (f"the host key of {host}:{port} has CHANGED: it does not match {known_hosts}; "
                               f"refusing to mount (possible man-in-the-middle attack)")
                else:
                    message = f"host key verification failed for {host}:{port} (hostKeyPolicy {policy}, {known_hosts})"
            elif "permission denied" in message.lower():
                raise ConnectorFailure(settings.login_refused(access))
            raise ConnectorFailure(f"sshfs could not mount {host}:{remote}: {message or f'exit code {result.returncode}'}")
        if not os.path.ismount(mountpoint):
            raise ConnectorFailure(f"sshfs reported success but {mountpoint} is not mounted")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the mounted sshfs no longer needs them


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def unmount(mountpoint: Path, *, missing_ok: bool = True) -> bool:
    """Unmount; a busy mount is detached lazily. True when the plain unmount succeeded."""
    if not os.path.ismount(mountpoint):
        if missing_ok:
            return True
        raise ConnectorFailure(f"{mountpoint} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    result = subprocess.run([tool, "-u", str(mountpoint)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0 and os.path.ismount(mountpoint):
        lazy = subprocess.run([tool, "-u", "-z", str(mountpoint)], capture_output=True, text=True, timeout=30)
        if lazy.returncode != 0 and os.path.ismount(mountpoint):
            raise ConnectorFailure(f"cannot unmount {mountpoint}: {(result.stderr or lazy.stderr).strip()}")
        return False
    return True
