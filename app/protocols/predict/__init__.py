"""``POST /predict`` and ``/predict/batch``: multipart uploads."""
