"""A tasks module written in Celery's style, following the examples of Celery's user guide (Tasks: "Bound
tasks", "Retrying", "Automatic retry for known exceptions"). Run by tests/test_compat_celery.py under a real
`decortask worker -A tests.celery_style_tasks`.

The one line changed from Celery is the import: `from celery import shared_task` became the line below.
Names are explicit (Celery's `name=`), so the producer (which imports this file as `celery_style_tasks`)
and the worker (which imports `tests.celery_style_tasks`) agree, as behaviour_tasks.py explains.
"""

from decortask.compat.celery import shared_task


class FailWhaleError(Exception):
    """The service is over capacity (the user guide's Twitter example)."""


class Twitter:
    """A service that is over capacity for the first `outages` tries of each status update."""

    def __init__(self, outages):
        self.outages = outages

    def update_status(self, tweet, tries_so_far):
        if tries_so_far < self.outages:
            raise FailWhaleError(f"over capacity, try {tries_so_far + 1}")
        return f"posted: {tweet}"


@shared_task(bind=True, name="celery_style.send_twitter_status", default_retry_delay=30 * 60)
def send_twitter_status(self, tweet, outages=2):
    print(f"try {self.request.retries + 1} of {self.request.id}")
    try:
        twitter = Twitter(outages)
        return twitter.update_status(tweet, self.request.retries)
    except FailWhaleError as exc:
        # overrides the default delay (30 minutes) to retry after 1 second
        raise self.retry(exc=exc, countdown=1)  # noqa: B904 - the guide's idiom: retry() raises itself


@shared_task(
    name="celery_style.refresh_timeline",
    autoretry_for=(FailWhaleError,),
    retry_backoff=True,
    retry_jitter=False,
    max_retries=3,
)
def refresh_timeline(user):
    print(f"refreshing the timeline of {user}")
    raise FailWhaleError(f"the timeline of {user} is over capacity")


@shared_task(bind=True, name="celery_style.dump_context")
def dump_context(self, x, y):
    print(f"Executing task id {self.request.id}, args: {self.request.args!r} kwargs: {self.request.kwargs!r}")
    return {
        "id": self.request.id,
        "retries": self.request.retries,
        "args": list(self.request.args),
        "kwargs": self.request.kwargs,
        "task": self.request.task,
        "name": self.name,
        "routing_key": self.request.delivery_info["routing_key"],
        "sum": x + y,
    }


@shared_task
def add(x, y):
    return x + y
