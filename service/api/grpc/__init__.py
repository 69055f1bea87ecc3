"""gRPC transport: ``gnbsched.v1.Scheduler`` (proto in ``proto/``, generated code in ``gen/``).

``server.start_grpc_server(core, host, port)`` serves it; ``client.SchedulerClient`` calls it.
"""
