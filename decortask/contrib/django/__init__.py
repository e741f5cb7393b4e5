"""Django integration: add `"decortask.contrib.django"` to `INSTALLED_APPS`.

At startup it builds the project's decortask app from the `DECORTASK` / `DECORTASK_*` settings, imports each
installed app's `tasks` module, sets `transaction.on_commit` as the commit hook (`task.delay_on_commit(...)`)
and closes stale database connections around every task, as Django does around a request. Run workers with
`python manage.py decortask_worker`. See docs/integrations/django.md.
"""
