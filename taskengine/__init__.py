"""Task engine: claims queued tasks from the database under a lease and carries them out through libvirt."""
