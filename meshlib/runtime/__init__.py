"""The agent side of a meshed workload: control-service client, cache and agent thread."""
