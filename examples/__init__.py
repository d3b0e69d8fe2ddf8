"""Runnable examples of meshlib: ``python -m examples.demo`` starts a three-service mesh."""
