"""Splitting a RED file into plain single-batch RED documents that upstream tools accept.

Conversions never fill ``{{variables}}``: secrets stay placeholders in everything written.
"""

from __future__ import annotations


def batch_documents(data: dict, source: str) -> list[dict]:
    """One single-batch RED document per batch: the RED without ``batches``/``sweep`` plus
    that batch's ``inputs`` and (when non-empty) ``outputs`` and ``cloud``."""
    from faice.red.sweep import expanded_red

    expanded = expanded_red(data, source)
    if "batches" not in expanded:
        return [expanded]
    base = {key: value for key, value in expanded.items() if key != "batches"}
    documents = []
    for batch in expanded["batches"]:
        document = dict(base)
        document["inputs"] = batch.get("inputs") or {}
        if batch.get("outputs"):
            document["outputs"] = batch["outputs"]
        if batch.get("cloud"):
            document["cloud"] = batch["cloud"]
        documents.append(document)
    return documents
