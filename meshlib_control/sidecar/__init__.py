"""``meshctl sidecar``: the agent beside an Envoy sidecar."""
