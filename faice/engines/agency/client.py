"""HTTP client for a CC-Agency (upstream's or ``faice agency serve``).

Connection errors and 5xx answers are retried with exponential backoff (bounded) by urllib3's
``Retry``, but only for idempotent requests: ``POST /red`` is retried only because it carries
an ``Idempotency-Key`` that makes the server answer a repeat with the first experiment. A 4xx
becomes a :class:`faice.errors.EngineError` carrying the server's own message; 401 says which
user was refused and what to check.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from faice.errors import EngineError
from faice.secrets import REDACTOR

FINAL = frozenset({"succeeded", "failed", "cancelled"})
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_STATUS = (500, 502, 503, 504)
PAGE_SIZE = 1000  # the agency's default page; listings are read page by page
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # retried without a key


class AgencyHTTPError(EngineError):
    """A 4xx answer; ``status`` lets callers tell "not found" from other refusals."""

    def __init__(self, message: str, status: int, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.status = status


def _session(auth: tuple[str, str], attempts: int, backoff: float, methods: frozenset[str]):
    """A requests session whose adapter retries ``methods`` (connection errors: every method)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retries = max(attempts - 1, 0)
    retry = Retry(
        total=retries, connect=retries, read=retries, status=retries, other=0,
        backoff_factor=backoff, backoff_max=10, status_forcelist=RETRY_STATUS,
        allowed_methods=methods, raise_on_status=False,
    )
    session = requests.Session()
    session.auth = auth
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class AgencyClient:
    def __init__(self, url: str, username: str, password: str, *, attempts: int = 5, backoff: float = 0.5, timeout: float = 30):
        self.url = url.rstrip("/")
        self.username = username
        self.attempts = attempts
        self.timeout = timeout
        REDACTOR.add(password)
        self._session = _session((username, password), attempts, backoff, _IDEMPOTENT)
        self._keyed = _session((username, password), attempts, backoff, _IDEMPOTENT | {"POST"})

    def request(
        self, method: str, path: str, *, params: dict | None = None, json_body: Any = None, text: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; retried only where repeating it cannot do anything twice."""
        import requests

        keyed = bool(headers and IDEMPOTENCY_HEADER in headers)
        retried = keyed or method.upper() in _IDEMPOTENT
        try:
            response = (self._keyed if keyed else self._session).request(
                method, self.url + path, params=params, json=json_body, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            tries = self.attempts if retried or isinstance(exc, requests.ConnectionError) else 1
            raise EngineError(REDACTOR.redact(
                f"cannot reach the agency at {self.url}: {_short(exc)} (tried {tries} times)"
            )) from None
        if response.status_code >= 500:
            tried = f" (tried {self.attempts} times)" if retried else ""
            raise EngineError(REDACTOR.redact(
                f"agency error {response.status_code} for {method} {path}: {_message(response)}{tried}"
            ))
        return self._result(response, method, path, text)

    def _result(self, response, method: str, path: str, text: bool) -> Any:
        if response.status_code == 401:
            detail = _message(response)
            raise AgencyHTTPError(
                REDACTOR.redact(f"the agency at {self.url} refused user {self.username!r}: {detail}"),
                401,
                hint="check the username and password (variables file, keyring service 'red', or prompt)",
            )
        if response.status_code >= 400:
            raise AgencyHTTPError(
                REDACTOR.redact(f"{method} {self.url}{path} failed ({response.status_code}): {_message(response)}"),
                response.status_code,
            )
        if text:
            return response.text
        try:
            return response.json()
        except ValueError:
            raise EngineError(f"{method} {self.url}{path}: the agency did not answer with JSON") from None

    # ------------------------------------------------------------ API
    def submit(self, red: dict[str, Any], *, disable_retry: bool, disable_connector_validation: bool,
               key: str | None = None) -> str:
        """``key``: the same for every submission of one run (a run directory's run id), so
        that a repeated submission is answered with the experiment the first one created."""
        params = {"disableRetry": int(disable_retry), "disableConnectorValidation": int(disable_connector_validation)}
        headers = {IDEMPOTENCY_HEADER: key or uuid.uuid4().hex}  # the same for every retry of this submission
        return self.request("POST", "/red", params=params, json_body=red, headers=headers)["experimentId"]

    def features(self) -> list[str]:
        """What a faice server announces beyond CC-Agency (an upstream agency: nothing)."""
        try:
            found = self.request("GET", "/version").get("faiceFeatures")
        except EngineError:
            return []
        return [str(f) for f in found] if isinstance(found, list) else []

    def batches(self, **filters: Any) -> list[dict[str, Any]]:
        return self.request("GET", "/batches", params={k: v for k, v in filters.items() if v is not None})

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("GET", f"/batches/{batch_id}")

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        return self.request("GET", f"/experiments/{experiment_id}")

    def experiments(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/experiments", params={"limit": limit} if limit else None)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/batches/{batch_id}")

    def log(self, batch_id: str, name: str) -> str:
        return self.request("GET", f"/batches/{batch_id}/{name}", text=True)

    def experiment_batches(self, experiment_id: str) -> list[dict[str, Any]]:
        """The batches of one experiment, in RED order (read page by page)."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.batches(experimentId=experiment_id, ascending=1, skip=len(found), limit=PAGE_SIZE)
            found += page
            if len(page) < PAGE_SIZE:
                break
        return sorted(found, key=lambda b: b.get("batchesListIndex") or 0)


def _message(response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason
    return data if isinstance(data, str) else json.dumps(data)[:500]


def _short(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text[:300]
