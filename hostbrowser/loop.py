"""libvirt's default event loop: one per process, shared with the task engine (appliance.libvirtloop)."""

from appliance.libvirtloop import ensure_running

__all__ = ["ensure_running"]
