"""Notification hooks: POST ``{"batches": [{"batchId", "state"}]}`` when batches become final.

Unlike upstream (best effort, up to 60 s late, never retried) a notification is sent soon
after the change and retried with exponential backoff; failures are logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("faice.agency")


@dataclass
class Hook:
    url: str
    username: str | None = None
    password: str | None = None


def post(hooks: list[Hook], batches: list[dict], *, attempts: int = 5, first_delay: float = 0.5) -> None:
    import requests

    body = {"batches": [{"batchId": b["_id"], "state": b["state"]} for b in batches]}
    for hook in hooks:
        auth = (hook.username, hook.password) if hook.username else None
        delay = first_delay
        for attempt in range(1, attempts + 1):
            try:
                response = requests.post(hook.url, json=body, auth=auth, timeout=10)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.warning("notification hook %s answered %s", hook.url, response.status_code)
                    break
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = str(exc)
            if attempt == attempts:
                log.warning("notification hook %s failed %d times, giving up: %s", hook.url, attempts, problem)
            else:
                time.sleep(delay)
                delay *= 2
