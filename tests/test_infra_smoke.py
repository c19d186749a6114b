"""Every test service works, as the integration tests will use it.

When one of these fails, the problem is the infrastructure (scripts/infra.sh), not faice.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

# ---------------------------------------------------------------- docker


@pytest.mark.docker
def test_base_image_runs_python_and_has_sshfs(docker_client, test_image, test_labels):
    out = docker_client.containers.run(
        test_image,
        ["sh", "-c", "python3 -c 'import sys; print(sys.version_info[0])' && for c in sshfs fusermount3 ssh; do command -v $c; done"],
        remove=True, network_mode="none", labels=test_labels,
    )
    lines = out.decode().split()
    assert lines[0] == "3"
    assert [line.rsplit("/", 1)[1] for line in lines[1:]] == ["sshfs", "fusermount3", "ssh"]


@pytest.mark.docker
def test_images_do_not_pass_the_test_label_to_containers(docker_client, test_image, user_image):
    # a container inherits its image's labels: org.faice.test on an image would make every
    # container of it a "test container" for the cleanup of any concurrent pytest session
    for name in (test_image, user_image):
        labels = docker_client.images.get(name).labels
        assert "org.faice.test" not in labels
        assert labels["org.faice.test.image"] in ("base", "user")


@pytest.mark.docker
def test_user_image_runs_as_uid_1000(docker_client, user_image, test_labels):
    out = docker_client.containers.run(
        user_image, ["sh", "-c", "id -u; id -g; id -un; pwd"],
        remove=True, network_mode="none", labels=test_labels,
    )
    assert out.decode().split() == ["1000", "1000", "cc", "/home/cc"]


@pytest.mark.docker
def test_docker_cli_with_network_none(test_image, test_labels):
    labels = [arg for key, value in test_labels.items() for arg in ("--label", f"{key}={value}")]
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *labels, test_image, "cat", "/etc/debian_version"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("12.")


# ---------------------------------------------------------------- ssh


def _ssh_client(ssh_server, **connect):
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(ssh_server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(ssh_server.host, port=ssh_server.port, allow_agent=False, look_for_keys=False,
                   timeout=20, banner_timeout=20, auth_timeout=20, **connect)
    return client


@pytest.mark.ssh
def test_ssh_password_login_and_sftp_round_trip(ssh_server, tmp_path):
    name = f"smoke-{uuid.uuid4().hex}.txt"
    src = tmp_path / "up.txt"
    src.write_bytes(b"hello over sftp\n" * 1000)
    with _ssh_client(ssh_server, username=ssh_server.user, password=ssh_server.password) as client:
        sftp = client.open_sftp()
        sftp.put(str(src), f"data/{name}")
        sftp.get(f"data/{name}", str(tmp_path / "down.txt"))
        sftp.remove(f"data/{name}")
        _, stdout, _ = client.exec_command("id -un")
        assert stdout.read().decode().strip() == ssh_server.user
    assert (tmp_path / "down.txt").read_bytes() == src.read_bytes()


@pytest.mark.ssh
def test_ssh_wrong_password_is_rejected(ssh_server):
    import paramiko

    with pytest.raises(paramiko.AuthenticationException):
        _ssh_client(ssh_server, username=ssh_server.user, password="wrong")


@pytest.mark.ssh
@pytest.mark.parametrize("key", ["ed25519", "rsa", "ed25519_enc"])
def test_ssh_key_login(ssh_server, key):
    import paramiko

    path = {"ed25519": ssh_server.key_ed25519, "rsa": ssh_server.key_rsa,
            "ed25519_enc": ssh_server.key_ed25519_enc}[key]
    passphrase = ssh_server.key_passphrase if key == "ed25519_enc" else None
    if key == "ed25519_enc":
        with pytest.raises(paramiko.PasswordRequiredException):
            paramiko.Ed25519Key.from_private_key_file(str(path))
    with _ssh_client(ssh_server, username=ssh_server.key_user, key_filename=str(path),
                     passphrase=passphrase) as client:
        _, stdout, _ = client.exec_command("id -un; ls -d data")
        assert stdout.read().decode().split() == [ssh_server.key_user, "data"]


@pytest.mark.ssh
def test_ssh_key_user_refuses_passwords(ssh_server):
    import paramiko

    with pytest.raises(paramiko.AuthenticationException):
        _ssh_client(ssh_server, username=ssh_server.key_user, password=ssh_server.password)


@pytest.mark.ssh
def test_sshfs_mount_from_the_host(ssh_server, tmp_path):
    if shutil.which("sshfs") is None:
        pytest.fail("sshfs is not installed on the host", pytrace=False)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["sshfs", "-p", str(ssh_server.port), "-o",
         f"password_stdin,UserKnownHostsFile={ssh_server.known_hosts},StrictHostKeyChecking=yes",
         f"{ssh_server.user}@{ssh_server.host}:data", str(mnt)],
        input=ssh_server.password + "\n", capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    name = f"sshfs-{uuid.uuid4().hex}.txt"
    try:
        (mnt / name).write_text("written through sshfs\n")
        assert (mnt / name).read_text() == "written through sshfs\n"
        on_server = ssh_server.home / "data" / name
        assert on_server.read_text() == "written through sshfs\n"
        assert on_server.owner() == ssh_server.user
        (mnt / name).unlink()
        assert not on_server.exists()
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
    assert not any(mnt.iterdir())


# ---------------------------------------------------------------- http


def _request(url, method="GET", data=None, auth=None, context=None):
    req = urllib.request.Request(url, method=method, data=data)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=20, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.http
def test_http_put_needs_auth_and_get_is_open(http_server):
    path = f"smoke/{uuid.uuid4().hex}/file.txt"
    url = f"{http_server.url}/{path}"
    assert _request(url, "PUT", b"payload")[0] == 401
    assert _request(url, "PUT", b"payload", auth=(http_server.user, "wrong"))[0] == 401
    assert _request(url, "PUT", b"payload", auth=(http_server.user, http_server.password))[0] == 201
    assert _request(url) == (200, b"payload")
    assert (http_server.root / path).read_bytes() == b"payload"
    listing = json.loads(_request(f"{http_server.json_url}/{path.rsplit('/', 1)[0]}/")[1])
    assert [entry["name"] for entry in listing] == ["file.txt"]
    assert _request(url, "DELETE")[0] == 401
    assert _request(url, "DELETE", auth=(http_server.user, http_server.password))[0] == 204
    assert _request(url)[0] == 404


@pytest.mark.http
def test_https_with_the_test_ca(http_server):
    name = f"smoke-{uuid.uuid4().hex}.txt"
    (http_server.root / name).write_text("over tls")
    try:
        context = ssl.create_default_context(cafile=str(http_server.ca))
        assert _request(f"{http_server.https_url}/{name}", context=context) == (200, b"over tls")
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _request(f"{http_server.https_url}/{name}", context=ssl.create_default_context())
    finally:
        (http_server.root / name).unlink()


# ---------------------------------------------------------------- s3


@pytest.mark.s3
def test_s3_round_trip(s3_server, s3_bucket):
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="dir/a.txt", Body=b"alpha")
    assert client.get_object(Bucket=s3_bucket, Key="dir/a.txt")["Body"].read() == b"alpha"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="dir/")["Contents"]]
    assert keys == ["dir/a.txt"]


@pytest.mark.s3
def test_s3_auth_server_checks_credentials(s3_server):
    from botocore.exceptions import ClientError

    good = s3_server.client(auth=True)
    bucket = f"faice-auth-{uuid.uuid4().hex[:12]}"
    good.create_bucket(Bucket=bucket)
    try:
        good.put_object(Bucket=bucket, Key="k", Body=b"v")
        bad = s3_server.client(auth=True, aws_secret_access_key="not-the-secret")
        with pytest.raises(ClientError) as err:
            bad.get_object(Bucket=bucket, Key="k")
        assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        unknown = s3_server.client(auth=True, aws_access_key_id="AKIANOTAKEY000000000")
        with pytest.raises(ClientError) as err:
            unknown.list_buckets()
        assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    finally:
        good.delete_object(Bucket=bucket, Key="k")
        good.delete_bucket(Bucket=bucket)


# ---------------------------------------------------------------- slurm


@pytest.mark.slurm
def test_slurm_job_completes(slurm, tmp_path):
    proc = subprocess.run(
        ["sbatch", "--parsable", "-p", slurm.partition, "-o", str(tmp_path / "out.txt"), "--wrap", "echo ok"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30)
        state = next((f.split("=", 1)[1] for f in show.stdout.split() if f.startswith("JobState=")), "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        time.sleep(0.2)
    assert state == "COMPLETED"
    assert (tmp_path / "out.txt").read_text() == "ok\n"


# ---------------------------------------------------------------- keyring fixtures


def test_keyring_env_is_a_private_file_keyring(keyring_env, tmp_path):
    import keyring

    keyring.set_password("red", "faice-smoke", "s3cret")
    assert keyring.get_password("red", "faice-smoke") == "s3cret"
    assert (tmp_path / "python_keyring" / "keyring_pass.cfg").exists()
    assert keyring_env["XDG_DATA_HOME"] == str(tmp_path)


def test_no_keyring_env_has_no_backend(no_keyring_env):
    import keyring
    from keyring.errors import NoKeyringError

    with pytest.raises(NoKeyringError):
        keyring.get_password("red", "anything")
