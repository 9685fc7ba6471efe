"""Data shipped into node images: dracut config and module, systemd units, networkd config."""
