"""Doors for code written for other task queues: `decortask.compat.celery` (docs/migrating-from-celery.md)."""
