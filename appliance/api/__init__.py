"""The appliance's REST API: a Starlette app behind Kerberos Negotiate; `create_app(cfg)` builds it."""

from appliance.api.app import create_app

__all__ = ["create_app"]
