"""HTTP APIs of the control service: the workload API and the admin API."""
