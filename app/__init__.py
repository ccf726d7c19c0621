"""catdog service: a FastAPI app serving the exported SavedModel over REST."""
