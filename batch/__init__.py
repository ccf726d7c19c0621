"""catdog's batch job: every file under a folder or bucket classified on Ray Data.

``python -m batch SOURCE --output OUT`` (``batch.cli``) lists the files
(``batch.source``), classifies them in a pool of Ray actors that each hold one
model (``batch.classify``), and streams one row per file into OUT
(``batch.output``); ``batch.job`` ties these together. See docs/batch.md.
"""
