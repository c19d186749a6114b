"""Built-in connector plugins, written against the public API in :mod:`faice.connectors`."""
