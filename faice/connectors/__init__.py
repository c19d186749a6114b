"""Connectors move inputs and outputs between their locations and host paths.

The public plugin API lives in :mod:`faice.connectors.api` and is re-exported here; the
framework engines use is :mod:`faice.connectors.staging` (imported on demand).
"""

from faice.connectors.api import (
    OPERATIONS,
    Connector,
    ConnectorFailure,
    HostIdentity,
    Listing,
    Progress,
    TransferCancelled,
    TransientFailure,
    listed_dirs,
    listed_files,
    safe_relative,
)

__all__ = [
    "OPERATIONS",
    "Connector",
    "ConnectorFailure",
    "HostIdentity",
    "Listing",
    "Progress",
    "TransferCancelled",
    "TransientFailure",
    "listed_dirs",
    "listed_files",
    "safe_relative",
]
