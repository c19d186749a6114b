"""Running ``rocrate-validator`` (PyPI: roc-validator) on a crate, without a network.

The validator fetches each crate's JSON-LD contexts over HTTPS; nothing but 127.0.0.1 is
reachable here, so its HTTP cache (its ``--offline`` mode reads only the cache) is filled
beforehand with the two contexts a faice crate names. They are written out here: each
term faice's crates use, mapped to the IRI the published context maps it to (schema.org
terms to ``http://schema.org/TERM``, ``File`` to ``schema:MediaObject``, ``conformsTo`` to
Dublin Core, the Workflow Run Crate terms to ``https://w3id.org/ro/terms/workflow-run#TERM``).
A key outside these lists fails the validator's "every key is a defined term" check, as it
would with the published contexts.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

SCHEMA_TERMS = (
    "Dataset", "CreativeWork", "SoftwareApplication", "SoftwareSourceCode", "ComputerLanguage", "CreateAction",
    "PropertyValue", "CompletedActionStatus", "FailedActionStatus", "ActiveActionStatus", "PotentialActionStatus",
    "about", "name", "description", "datePublished", "license", "hasPart", "mentions", "instrument", "agent",
    "object", "result", "actionStatus", "startTime", "endTime", "error", "version", "url", "identifier",
    "alternateName", "encodingFormat", "contentSize", "programmingLanguage", "value", "unitCode", "additionalType",
)
WFRUN_TERMS = ("ContainerImage", "DockerImage", "SIFImage", "containerImage", "registry", "tag", "sha256", "environment")
CONTEXTS = {
    "https://w3id.org/ro/crate/1.1/context": {
        **{term: f"http://schema.org/{term}" for term in SCHEMA_TERMS},
        "File": "http://schema.org/MediaObject", "conformsTo": "http://purl.org/dc/terms/conformsTo"},
    "https://w3id.org/ro/terms/workflow-run/context": {
        term: f"https://w3id.org/ro/terms/workflow-run#{term}" for term in WFRUN_TERMS},
}


def fill_cache(cache: Path) -> None:
    """The validator's HTTP cache (requests-cache, SQLite) with the two contexts."""
    import requests
    import urllib3
    from requests_cache import CachedSession

    session = CachedSession(cache_name=str(cache), backend="sqlite", allowable_methods=("GET",),
                            allowable_codes=(200,), expire_after=-1)
    for url, context in CONTEXTS.items():
        body = json.dumps({"@context": context}).encode()
        response = requests.Response()
        response.status_code, response.url, response._content = 200, url, body
        response.headers = requests.structures.CaseInsensitiveDict({"Content-Type": "application/ld+json"})
        response.request = requests.Request("GET", url).prepare()
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=dict(response.headers), status=200,
                                            preload_content=False)
        response.raw._request_url = url
        session.cache.save_response(response)
    session.close()


def validate(crate: Path, cache: Path, profile: str = "process-run-crate-0.5") -> dict:
    """The validator's JSON report of ``crate`` against ``profile`` (its CLI, offline)."""
    if not Path(str(cache) + ".sqlite").exists():
        fill_cache(cache)
    validator = Path(sys.executable).with_name("rocrate-validator")
    result = subprocess.run(
        [str(validator), "--no-interactive", "--disable-color", "validate", "--offline", "--cache-path", str(cache),
         "-p", profile, "-f", "json", str(crate)],
        capture_output=True, text=True, timeout=300)
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"rocrate-validator said (exit {result.returncode}):\n{result.stdout}\n{result.stderr}") from None
