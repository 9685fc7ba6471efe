"""Host browser: discovery, identify, and one libvirt session per host that keeps hosts and VMs true."""
