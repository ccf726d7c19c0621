"""The Open Inference Protocol v2: REST routes (``routes``), their schemas and codec
(``schemas``, ``codec``), and the gRPC calls (``servicer``)."""
