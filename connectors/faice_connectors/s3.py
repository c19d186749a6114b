"""``s3``: objects and prefixes in S3 or an S3-compatible store (a faice extension).

Access: ``url`` (``s3://bucket/key`` for a file, ``s3://bucket/prefix/`` for a directory),
``endpointUrl`` (then path-style addressing, as self-hosted stores need), ``region``, and
``auth`` {``accessKeyId``, ``secretAccessKey``, ``sessionToken``}, none of them empty. With
``auth`` the client signs with exactly those credentials, never boto3's credential chain;
without ``auth`` the chain (environment, ``~/.aws``, instance role) applies on a local run,
and on an agency (:attr:`HostIdentity.account_credentials` false) requests go unsigned. Transfers use boto3's managed transfer (multipart, several
threads) so large files run near the store's speed.
"""

from __future__ import annotations

import threading
from pathlib import Path

from faice.connectors import (
    Connector,
    ConnectorFailure,
    Listing,
    Progress,
    TransientFailure,
    listed_files,
    safe_relative,
)
from faice.connectors.trees import output_tree
from faice_connectors._shared import strings_block

MiB = 1024 * 1024


class S3Connector(Connector):
    """Files as objects, directories as key prefixes."""

    names = ("s3",)
    access_schema = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "pattern": "^s3://[^/]{3,}(/.*)?$"},
            "endpointUrl": {"type": "string", "pattern": "^https?://"},
            "region": {"type": "string"},
            "auth": strings_block(["accessKeyId", "secretAccessKey"], ["sessionToken"], non_empty=True),
            "disableSSLVerification": {"type": "boolean"},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self._lock = threading.Lock()
        self._clients: dict[tuple, object] = {}

    # ---------------------------------------------------------------- plumbing

    def _client(self, access):
        """One client per endpoint/region/credentials (boto3 clients are thread-safe)."""
        auth = access.get("auth") or {}
        if auth and not (auth.get("accessKeyId") and auth.get("secretAccessKey")):
            # boto3 reads empty strings as "not given" and would sign with the host's identity
            raise ConnectorFailure("auth.accessKeyId and auth.secretAccessKey must not be empty")
        unsigned = not auth and not self.identity.account_credentials
        key = (access.get("endpointUrl"), access.get("region"), auth.get("accessKeyId"),
               auth.get("secretAccessKey"), auth.get("sessionToken"), access.get("disableSSLVerification"), unsigned)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config

                config = Config(
                    s3={"addressing_style": "path"} if access.get("endpointUrl") else {},
                    connect_timeout=self.timeout or 20,
                    read_timeout=self.timeout or 120,
                    retries={"total_max_attempts": 2, "mode": "standard"},
                    max_pool_connections=16,
                    signature_version=UNSIGNED if unsigned else None,
                )
                session = boto3.session.Session(region_name=access.get("region"))
                client = session.client(
                    "s3", endpoint_url=access.get("endpointUrl"), config=config,
                    verify=not access.get("disableSSLVerification", False),
                    # given explicitly, so that boto3 never falls back to its credential chain
                    aws_access_key_id=auth.get("accessKeyId"), aws_secret_access_key=auth.get("secretAccessKey"),
                    aws_session_token=auth.get("sessionToken") or None,
                )
                self._clients[key] = client
            return client

    @staticmethod
    def _transfer_config():
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB,
                              max_concurrency=8, io_chunksize=MiB)

    def _call(self, what: str, action):
        """Run a boto3 call; turn its errors into messages that say what to fix."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        try:
            return action()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ConnectorFailure(f"{what}: the object does not exist") from None
            if code == "NoSuchBucket":
                raise ConnectorFailure(f"{what}: the bucket does not exist") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken", "InvalidClientTokenId"):
                raise ConnectorFailure(f"{what}: access denied ({code}; check auth accessKeyId/secretAccessKey)") from None
            if status and int(status) >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise TransientFailure(f"{what}: {code} {error.get('Message', '')}".strip()) from None
            raise ConnectorFailure(f"{what}: {code} {error.get('Message', '')}".strip()) from None
        except NoCredentialsError:
            raise ConnectorFailure(f"{what}: no credentials (give auth or configure the AWS credential chain)") from None
        except (EndpointConnectionError, ConnectionError) as exc:
            raise TransientFailure(f"{what}: cannot reach the endpoint: {exc}") from None
        except BotoCoreError as exc:
            raise ConnectorFailure(f"{what}: {exc}") from None
        except Exception as exc:  # s3transfer wraps errors of its worker threads
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError | BotoCoreError):
                return self._call(what, lambda: _reraise(cause))
            raise

    # ---------------------------------------------------------------- validation

    def validate(self, access, operation, listing=None):
        bucket, key = split_url(access["url"])
        client = self._client(access)
        where = access["url"]
        if operation == "receive-file":
            self._call(where, lambda: client.head_object(Bucket=bucket, Key=key))
        elif operation == "receive-dir":
            prefix = _prefix(key)
            if listing is not None:
                for rel, _item in listed_files(listing):
                    self._call(f"s3://{bucket}/{prefix}{rel}",
                               lambda rel=rel: client.head_object(Bucket=bucket, Key=prefix + rel))
            else:
                found = self._call(where, lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1))
                if not found.get("KeyCount"):
                    raise ConnectorFailure(f"{where}: no objects under this prefix")
        else:
            self._call(f"s3://{bucket}", lambda: client.head_bucket(Bucket=bucket))

    # ---------------------------------------------------------------- primitives

    def _managed(self, where: str, transfer, *args, progress: Progress) -> None:
        """One boto3 managed transfer (multipart, several threads) with progress; errors mapped."""
        self._call(where, lambda: transfer(*args, Callback=progress.advance, Config=self._transfer_config()))

    def receive_file(self, access, dest: Path, progress: Progress) -> None:
        bucket, key = split_url(access["url"])
        client = self._client(access)
        self._managed(access["url"], client.download_file, bucket, key, str(dest), progress=progress)

    def receive_dir(self, access, dest: Path, listing: Listing | None, progress: Progress) -> None:
        bucket, key = split_url(access["url"])
        prefix = _prefix(key)
        client = self._client(access)
        if listing is not None:
            keys = [rel for rel, _item in listed_files(listing)]
        else:
            keys = []
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in self._call(access["url"], lambda: list(pages)):
                keys += [obj["Key"][len(prefix):] for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
        for rel in keys:
            target = dest / safe_relative(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._managed(f"s3://{bucket}/{prefix}{rel}", client.download_file, bucket, prefix + rel, str(target),
                          progress=progress)

    def send_file(self, access, src: Path, progress: Progress) -> None:
        bucket, key = split_url(access["url"])
        if not key or key.endswith("/"):
            key = _prefix(key) + src.name
        client = self._client(access)
        self._managed(access["url"], client.upload_file, str(src), bucket, key, progress=progress)

    def send_dir(self, access, src: Path, listing: Listing | None, progress: Progress) -> None:
        bucket, key = split_url(access["url"])
        prefix = _prefix(key)
        client = self._client(access)
        for item in output_tree(src, listing).files:  # links out of the output are refused
            self._managed(f"s3://{bucket}/{prefix}{item.rel}", client.upload_file, str(item.path), bucket,
                          prefix + item.rel, progress=progress)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:
                pass


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (``bucket``, ``some/key``)."""
    rest = url[len("s3://"):]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _prefix(key: str) -> str:
    return key if not key or key.endswith("/") else key + "/"


def _reraise(exc: BaseException):
    raise exc
