"""TensorFlow Serving's API: REST (``routes``) and gRPC (``servicer``)."""
