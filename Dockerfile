# syntax=docker/dockerfile:1
# catdog service images.
#   docker build --target cpu -t catdog:cpu .    (LiteRT: serves model.tflite, no TensorFlow)
#   docker build --target gpu -t catdog:gpu .    (tensorflow[and-cuda] serves the SavedModel;
#                                                 CUDA and cuDNN come as pip wheels; the NVIDIA
#                                                 container runtime only injects the driver)
# The shipped model (models/catdog) is baked in at /models/catdog; mount another
# model base folder there (read-only) to replace it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- dependencies, built in throw-away stages --------------------------------
# Each image installs extras of pyproject.toml (the one list of what a use needs), pinned by
# requirements.lock; the project itself is then uninstalled again: its code is copied below.
FROM base AS deps
COPY pyproject.toml requirements.lock README.md /tmp/catdog/
RUN python -m venv /opt/venv

FROM deps AS deps-cpu
RUN /opt/venv/bin/pip install -c /tmp/catdog/requirements.lock "/tmp/catdog[serve]" \
 && /opt/venv/bin/pip uninstall --yes catdog

FROM deps AS deps-gpu
RUN /opt/venv/bin/pip install -c /tmp/catdog/requirements.lock "/tmp/catdog[gpu]" \
 && /opt/venv/bin/pip uninstall --yes catdog

# ---- what every final image holds: user, environment, health check -----------
FROM base AS runtime
RUN groupadd --system --gid 10001 catdog \
 && useradd --system --uid 10001 --gid catdog --home-dir /srv/catdog --shell /usr/sbin/nologin catdog
WORKDIR /srv/catdog
ENV PATH=/opt/venv/bin:$PATH \
    PORT=8000 \
    CATDOG_GRPC_ADDRESS=0.0.0.0:8081 \
    CATDOG_MODEL_DIR=/models/catdog \
    TF_CPP_MIN_LOG_LEVEL=2
# REST on 8000; gRPC (Open Inference Protocol, TF Serving) on 8081 (KServe's gRPC port)
EXPOSE 8000 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/srv/catdog/docker/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/srv/catdog/docker/entrypoint.sh"]

# ---- final images: dependencies first (they change least), then code and model
FROM runtime AS cpu
COPY --from=deps-cpu /opt/venv /opt/venv
ENV CATDOG_RUNTIME=litert
COPY catdog ./catdog
COPY app ./app
COPY docker/entrypoint.sh docker/healthcheck.py ./docker/
COPY models/catdog /models/catdog
USER catdog

FROM runtime AS gpu
COPY --from=deps-gpu /opt/venv /opt/venv
COPY catdog ./catdog
COPY app ./app
COPY docker/entrypoint.sh docker/healthcheck.py ./docker/
COPY models/catdog /models/catdog
# The SavedModel on TensorFlow; GPU memory allocated as needed instead of all of it at start.
ENV CATDOG_RUNTIME=tensorflow \
    TF_FORCE_GPU_ALLOW_GROWTH=true
USER catdog

# ---- training image: GPU TensorFlow + the training package (compose `train`) ---
FROM deps-gpu AS deps-train
RUN /opt/venv/bin/pip install -c /tmp/catdog/requirements.lock "/tmp/catdog[train,gpu]" \
 && /opt/venv/bin/pip uninstall --yes catdog

FROM runtime AS train
COPY --from=deps-train /opt/venv /opt/venv
COPY catdog ./catdog
COPY training ./training
HEALTHCHECK NONE
USER catdog
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---- batch image: LiteRT + Ray + the batch job (deploy/k8s/jobs/batch-rayjob.yaml) --
# KubeRay starts `ray start` in it as the head and the workers; the job runs
# `python -m batch` on the head (docs/batch.md).
FROM deps AS deps-batch
RUN /opt/venv/bin/pip install -c /tmp/catdog/requirements.lock "/tmp/catdog[batch]" \
 && /opt/venv/bin/pip uninstall --yes catdog

FROM runtime AS batch
COPY --from=deps-batch /opt/venv /opt/venv
ENV CATDOG_RUNTIME=litert
COPY catdog ./catdog
COPY app ./app
COPY batch ./batch
COPY models/catdog /models/catdog
HEALTHCHECK NONE
USER catdog
ENTRYPOINT ["python", "-m", "batch"]
CMD ["--help"]
