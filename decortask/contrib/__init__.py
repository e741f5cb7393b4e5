"""Integrations with other frameworks. Only modules in here (and in `dashboard/`) import optional packages."""
