"""A tasks module written in Celery's style to the examples of Celery's user guide "Canvas: Designing
Work-flows" (signatures, chains, groups, chords, callbacks and errbacks). Run by
tests/test_compat_celery_canvas.py under a real `decortask worker -A tests.celery_canvas_tasks`.

The one line changed from Celery is the import: `from celery import chain, chord, group, shared_task`
became the line below. Names are explicit (Celery's `name=`), so the producer (which imports this file as
`celery_canvas_tasks`) and the worker (which imports `tests.celery_canvas_tasks`) agree.
"""

from decortask.compat.celery import AsyncResult, chain, chord, group, shared_task  # noqa: F401 - the guide's


@shared_task(name="celery_canvas.add")
def add(x, y):
    return x + y


@shared_task(name="celery_canvas.mul")
def mul(x, y):
    return x * y


@shared_task(name="celery_canvas.xsum")
def xsum(numbers):
    return sum(numbers)


@shared_task(bind=True, name="celery_canvas.whoami")
def whoami(self, value):
    """A bound task as a chain's step: it sees its own request, as the worker runs it."""
    return {"value": value, "id": self.request.id, "task": self.request.task, "name": self.name}


@shared_task(name="celery_canvas.fails")
def fails(x):
    raise ValueError(f"{x} is not welcome")


@shared_task(name="celery_canvas.error_handler")
def error_handler(uuid):
    """An errback as Celery's Calling guide wrote them: it gets the failed task's id."""
    result = AsyncResult(uuid)
    exc = result.get(propagate=False)
    return f"Task {uuid} raised exception: {exc.error_type}: {exc.error_message}"


@shared_task(name="celery_canvas.log_error")
def log_error(request, exc, traceback):
    """An errback as Celery's Canvas guide writes them: the failed task's request, exception and traceback."""
    return {
        "id": request.id,
        "task": request.task,
        "args": list(request.args),
        "exc": f"{exc.error_type}: {exc.error_message}",
        "traceback": traceback.strip().splitlines()[-1],
    }
