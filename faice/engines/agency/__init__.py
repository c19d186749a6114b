"""The ``ccagency`` engine: submit to a CC-Agency and follow it (client, connect, engine, follow)."""
