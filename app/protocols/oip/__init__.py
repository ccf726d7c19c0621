"""The Open Inference Protocol v2: REST routes and the binary tensor data extension
(``routes``), the request and response schemas (``schemas``), the inputs and outputs of
REST and gRPC alike and the gRPC calls (``codec``)."""
