"""meshlib_control: the control service (CA, store, snapshots, APIs, xDS)."""
