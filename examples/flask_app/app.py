"""One app made by the factory, for WSGI servers and `flask --app examples.flask_app.app run`.

Worker: `decortask worker -A examples.flask_app.app:app`, or `-A examples.flask_app:create_app` without
this module. See the package's docstring for the configuration.
"""

from __future__ import annotations

from . import create_app

app = create_app()
