"""The drover-live dracut module (shell files copied into the image, not Python)."""
