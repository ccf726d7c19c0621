"""The standard inference protocols, spoken beside ``/predict`` (see docs/protocols.md).

* ``oip``: the Open Inference Protocol v2 (KServe, Triton), REST, with the binary
  tensor data and classification extensions (routes in ``app/api/routes/v2.py``);
* ``tfserving``: TensorFlow Serving's REST API (routes in ``app/api/routes/tfserving.py``
  and ``models.py``);
* ``common``: what both share (body parsing, images as base64, limits, OpenAPI bodies);
* their error answers, ``{"error": ...}``, come from ``app/api/errors.py``.

Both go through ``InferenceService.classify`` (encoded images, decoded by the one
preprocessing) or ``classify_tensor`` (pixels), hence the same admission, batcher,
limits and metrics as ``/predict``.
"""
