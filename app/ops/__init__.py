"""Running the service in production: API keys, request ids and JSON logs, OpenTelemetry
traces and the payload log. Each part is off until its setting is set
(docs/service.md, "Operations"); ``app.ops.install`` wires them into an app and its
gRPC server.
"""
