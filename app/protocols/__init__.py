"""The inference protocols, one package each: ``predict`` (multipart uploads), ``oip``
(the Open Inference Protocol v2, whose codec holds the entry all share) and
``tfserving``; ``numbers`` reads JSON bodies, ``messages`` holds the gRPC messages."""
