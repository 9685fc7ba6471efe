"""Monitor: collectd network-protocol receiver, round-robin archives, query API, Prometheus exposition."""
