"""URLs of the notes app."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.note_list, name="note-list"),
    path("notes/<int:pk>/", views.note_detail, name="note-detail"),
]
