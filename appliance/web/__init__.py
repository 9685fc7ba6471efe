"""The web UI: server-rendered pages with htmx on the API's origin, signed in by Kerberos (or a password the
realm checks), every page and action through the same permission check and domain functions as the API."""
