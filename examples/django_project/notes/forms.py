"""The note form."""

from __future__ import annotations

from django import forms


class NoteForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea, max_length=10_000)
    dry_run = forms.BooleanField(required=False, help_text="Check the note, then roll everything back.")
