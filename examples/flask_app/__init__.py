"""Flask example: a form enqueues a task; a page shows its status, progress and logs."""
