"""Transports: REST (``api.rest``, FastAPI/uvicorn) and gRPC (``api.grpc``), plus ``gnbsched serve``.

Both decode a request into a ``SlotState`` (``service.types.make_slot``), call one
``ServiceCore.schedule`` and encode the ``Decision``; ``api.schemas`` holds the REST (JSON)
decoding and the pydantic models that document it.
"""
