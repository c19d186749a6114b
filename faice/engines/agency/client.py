"""HTTP client for a CC-Agency (upstream's or ``faice agency serve``).

Connection errors and 5xx answers are retried with exponential backoff (bounded); a 4xx
becomes a :class:`faice.errors.EngineError` carrying the server's own message; 401 says
which user was refused and what to check.
"""

from __future__ import annotations

import json
import time
from typing import Any

from faice.errors import EngineError
from faice.secrets import REDACTOR

FINAL = frozenset({"succeeded", "failed", "cancelled"})


class AgencyHTTPError(EngineError):
    """A 4xx answer; ``status`` lets callers tell "not found" from other refusals."""

    def __init__(self, message: str, status: int, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.status = status


class AgencyClient:
    def __init__(self, url: str, username: str, password: str, *, attempts: int = 5, backoff: float = 0.5, timeout: float = 30):
        import requests

        self.url = url.rstrip("/")
        self.username = username
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        REDACTOR.add(password)
        self._session = requests.Session()
        self._session.auth = (username, password)

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None, text: bool = False) -> Any:
        import requests

        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            problem = None
            try:
                response = self._session.request(method, self.url + path, params=params, json=json_body, timeout=self.timeout)
            except requests.RequestException as exc:
                problem = f"cannot reach the agency at {self.url}: {_short(exc)}"
            else:
                if response.status_code < 500:
                    return self._result(response, method, path, text)
                problem = f"agency error {response.status_code} for {method} {path}: {_message(response)}"
            if attempt == self.attempts:
                raise EngineError(REDACTOR.redact(problem) + f" (tried {self.attempts} times)")
            time.sleep(delay)
            delay = min(delay * 2, 10)
        raise AssertionError("unreachable")

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
    def submit(self, red: dict[str, Any], *, disable_retry: bool, disable_connector_validation: bool) -> str:
        params = {"disableRetry": int(disable_retry), "disableConnectorValidation": int(disable_connector_validation)}
        return self.request("POST", "/red", params=params, json_body=red)["experimentId"]

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
        """The batches of one experiment, in RED order."""
        found = self.batches(experimentId=experiment_id, ascending=1)
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
