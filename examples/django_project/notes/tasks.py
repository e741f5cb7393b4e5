"""Tasks of the notes app: found by decortask.contrib.django at startup because this module is `tasks.py`."""

from __future__ import annotations

from django.utils import timezone

from decortask import TaskContext, task, task_log

from .models import Note


@task(retries=2, delay=1.0)
def publish_note(ctx: TaskContext, note_id: int) -> int:
    """Count the note's words and mark it published; returns the word count."""
    note = Note.objects.get(pk=note_id)
    words = len(note.text.split())
    task_log("counted words", note=note_id, words=words)
    ctx.set_progress(0.5, "counted")
    Note.objects.filter(pk=note_id).update(
        status=Note.Status.PUBLISHED, word_count=words, published_at=timezone.now()
    )
    ctx.set_progress(1.0, "published")
    return words


@task
async def count_published() -> int:
    """An `async def` task on Django's async ORM: the worker runs it on its event loop."""
    return await Note.objects.filter(status=Note.Status.PUBLISHED).acount()
