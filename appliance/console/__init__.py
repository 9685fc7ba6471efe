"""VM consoles through the appliance: one-time tickets, the libvirt side (VNC one-time password, serial stream)
and the WebSocket proxy the web UI's noVNC and xterm pages and `drover vm console` connect to."""
