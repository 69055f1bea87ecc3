"""Transports over the one service core, and ``gnbsched serve`` that assembles them.

``contract`` holds the one table of request field rules both transports enforce; ``rest``
(FastAPI/uvicorn: JSON codec, OpenAPI models, the app) and ``grpc`` (protobuf conversion, the
server) decode a request into a ``SlotState``, ``await ServiceCore.decide(...)`` and encode the
``Decision``; ``serve`` builds the core, runs gRPC beside REST and handles signals.
"""
