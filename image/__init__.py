"""Node image builder: profiles, build backends (debian: mmdebstrap+dracut, fedora: lorax), manifest."""
