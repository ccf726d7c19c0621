#!/bin/sh
# One uvicorn process per container: batching happens inside it, and several
# processes on one GPU would each grab its memory. `python -m app` (app/server.py)
# runs uvicorn with bounded headers, header/body timeouts and a connection cap
# (CATDOG_* settings). SIGTERM (docker stop) makes it stop accepting, finish
# in-flight requests (up to CATDOG_GRACEFUL_SHUTDOWN_S; then they get a JSON 503),
# then run the app's shutdown, which drains the batch queue.
set -e
exec python -m app --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" --no-access-log "$@"
