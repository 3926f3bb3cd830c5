"""Thin Celery tasks: parse ids and dates, open a session, call into ``worker``."""
