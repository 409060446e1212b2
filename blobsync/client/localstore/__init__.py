"""The local store: blob state and sealed payloads, encrypted at rest.

State lives in a SQLCipher database keyed from secret[0:64]. A payload is the sealed blob,
byte for byte what travels to the server. Small ones are rows of a second database,
attached to the first (``pl.payloads``, keyed by the row id of their blob); large ones are
files under ``blobs/`` with random names. Payloads are sealed already, so their database
is plain SQLite, like the files: a second encryption cost more than the sealing itself and
hid nothing more than the server sees. Namespaces, ids and states are only in the
SQLCipher database. Why the split and where it lies: docs/client.md, "Local store".

Every database call runs on one dedicated thread: SQLite connections are not to be shared
between threads, and the event loop must not block on disk.

The parts, one idea each (lower ones never import higher ones):

- ``rows.py``: the rows handed out and taken in (``Row``, ``Attach``, ``Sealed``,
  ``Source``);
- ``files.py``: the store's files (``LocalFileWriter``, ``read_file``, durable moves, a
  full disk as ``NoSpace``);
- ``schema.py``: the tables, a connection's setup, migrations and the schema version;
- ``recovery.py``: crash recovery (the directory lock, the sessions count, the sweep,
  transactions whose commit fails);
- ``core.py``: the database thread, transactions, file names (``StoreCore``);
- ``reads.py`` / ``writes.py``: the queries (``StoreReads``, ``StoreWrites``);
- ``store.py``: ``LocalStore``, their sum, with its life cycle (open, close).

Others import from here, not from the parts.
"""

from .files import LocalFileWriter, read_file
from .rows import Attach, Named, Row, Sealed, Source
from .schema import PAYLOADS_DB, SCHEMA_VERSION
from .store import LocalStore

__all__ = [
    "PAYLOADS_DB",
    "SCHEMA_VERSION",
    "Attach",
    "LocalFileWriter",
    "LocalStore",
    "Named",
    "Row",
    "Sealed",
    "Source",
    "read_file",
]
