"""HTTP layer: routers, schemas, error handlers."""
