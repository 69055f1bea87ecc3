"""REST transport: FastAPI on uvicorn (``create_app``)."""

from service.api.rest.app import app_from_env, build_core, create_app

__all__ = ["app_from_env", "build_core", "create_app"]
