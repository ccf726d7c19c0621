"""The model contract, the one preprocessing, and model loading: what serving and training share.

Nothing here imports TensorFlow at import time; the SavedModel runtime imports it
when a model is loaded with it.
"""
