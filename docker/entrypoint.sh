#!/bin/sh
# One uvicorn process per container: batching happens inside it, and several
# processes on one GPU would each grab its memory. SIGTERM (docker stop) makes
# uvicorn stop accepting, finish in-flight requests (up to the grace period),
# then run the app's shutdown, which drains the batch queue.
set -e
exec uvicorn app.main:app --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --timeout-graceful-shutdown "${GRACEFUL_SHUTDOWN_S:-25}" --no-access-log "$@"
