"""The Open Inference Protocol v2: REST (``routes``), schemas, tensors and gRPC (``codec``)."""
