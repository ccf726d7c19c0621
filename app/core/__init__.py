"""Service internals: settings, model loading, batching, metrics."""
