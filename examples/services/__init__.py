"""The demo's three services: frontend -> orders -> inventory, each its own process."""
