"""The state room: SQLite index, spool folder, jobs and audit. Imports only the base layer."""

from appliance.store.store import Store, open_store

__all__ = ["Store", "open_store"]
