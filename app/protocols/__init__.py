"""The inference protocols the service speaks, one package each (docs/protocols.md).

* ``predict``: ``POST /predict`` and ``/predict/batch`` (multipart uploads);
* ``oip``: the Open Inference Protocol v2 (KServe, Triton), REST with the binary tensor
  data and classification extensions, and gRPC;
* ``tfserving``: TensorFlow Serving's REST API (its model status shares
  ``app/api/routes.py``) and gRPC;
* ``common``, ``numbers``: what the JSON protocols share (body parsing, tensors of
  numbers, images as base64, limits); ``messages``, ``wire``: the gRPC messages (protoc's
  output) and the field-count bound on a message's wire format.

Every protocol goes through ``InferenceService.classify`` (encoded images, decoded by
the one preprocessing) or ``classify_tensor`` (pixels), hence the same gate, admission,
batcher, limits and metrics; error answers come from ``app/core/errors.py``.
"""
