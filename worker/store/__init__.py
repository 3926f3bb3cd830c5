"""The store: the tables, the engine and sessions, and the migrations."""
