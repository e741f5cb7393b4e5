"""Views: the form saves a draft and enqueues `publish_note` once the transaction commits."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from .forms import NoteForm
from .models import Note
from .tasks import publish_note


def note_list(request: HttpRequest) -> HttpResponse:
    notice = None
    form = NoteForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            note = Note.objects.create(text=form.cleaned_data["text"])
            # Sent only if this block commits: the worker never sees a note id that does not exist.
            publish_note.delay_on_commit(note.pk)
            if form.cleaned_data["dry_run"]:
                transaction.set_rollback(True)
        if not form.cleaned_data["dry_run"]:
            return redirect("note-detail", pk=note.pk)
        notice = "Dry run: the note was valid; nothing was saved and nothing was queued."
        form = NoteForm()
    context = {"form": form, "notes": Note.objects.all()[:20], "notice": notice}
    return render(request, "notes/list.html", context)


def note_detail(request: HttpRequest, pk: int) -> HttpResponse:
    note = get_object_or_404(Note, pk=pk)
    return render(request, "notes/detail.html", {"note": note})
