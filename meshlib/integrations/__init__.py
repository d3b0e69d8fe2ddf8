"""The only place frameworks are imported: httpx, ASGI, uvicorn (and later gRPC)."""
