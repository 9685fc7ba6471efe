"""The node agent: finds the appliance, identifies, installs its keytab, configures libvirtd, heartbeats."""
