"""FastAPI example: endpoints enqueue with `await task.adelay(...)` and read status with async handle methods."""
