"""The inference protocols the service speaks, one package each (docs/protocols.md).

* ``predict``: ``POST /predict`` and ``/predict/batch`` (multipart uploads);
* ``oip``: the Open Inference Protocol v2 (KServe, Triton), REST with the binary tensor
  data and classification extensions, and gRPC;
* ``tfserving``: TensorFlow Serving's REST API (its model status shares
  ``app/api/routes.py``) and gRPC;
* ``common``: what they share (images, pixel tensors, limits, the probability table,
  ``classify_input``); ``numbers``: JSON bodies, parsed once with their tensors of
  numbers as arrays; ``messages``: the gRPC messages (protoc's output). The gRPC server,
  its wire-level field bound and its error mapping are ``app/api/grpc_server.py``.

Every protocol goes through ``classify_input``: ``InferenceService.classify`` (encoded
images, decoded by the one preprocessing) or ``classify_tensor`` (pixels), hence the
same gate, admission, batcher, limits and metrics; error answers come from
``app/core/errors.py``.
"""
