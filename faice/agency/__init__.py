"""A CC-Agency 9.3-compatible server: REST API, users, storage, secrets at rest, dispatcher.

Modules: ``ids`` (ObjectId-like ids), ``db`` (SQLite/PostgreSQL behind one small layer),
``auth`` (password hashing, lockout, tokens), ``vault`` (secrets encrypted at rest),
``submit`` (POST /red checks and documents), ``app`` (the WSGI app), ``dispatcher``
(runs batches), ``runner`` (the batch pipeline adapter), ``notify`` (hooks), ``client``
(the HTTP client used by ``faice exec``/``status``/``logs``/``cancel``/``list``).
"""

AGENCY_VERSION = "9.3.0"
