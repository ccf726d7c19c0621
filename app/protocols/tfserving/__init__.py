"""TensorFlow Serving's API: REST routes (``routes``), their schemas and codec (``codec``),
and the gRPC calls (``servicer``)."""
