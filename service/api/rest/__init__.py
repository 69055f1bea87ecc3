"""REST transport: FastAPI on uvicorn (``create_app``); ``service.api.serve`` assembles the server."""

from service.api.rest.app import create_app

__all__ = ["create_app"]
