# syntax=docker/dockerfile:1
# convserve: the service and the `convserve` CLI in one image. See docs/DEPLOY.md.
#   docker build -t convserve:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -p 8000:8000 convserve:0.1.0

# --- builder: turn the source tree into wheels (ours + every dependency) ---------------------
FROM python:3.11.13-slim-bookworm AS builder

WORKDIR /src
# Reproducible: every runtime dependency at the version in requirements.lock, each file checked
# against the lock's sha256 (`make lock` regenerates both locks from pyproject.toml), and our
# own wheel built offline with the locked setuptools/wheel, so two builds a month apart
# install the same bytes. All wheels and the lock land in /wheels for the runtime stage.
COPY requirements.lock requirements-build.lock ./
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock \
    && pip install --no-cache-dir --require-hashes -r requirements-build.lock \
    && cp requirements.lock /wheels/
COPY pyproject.toml README.md ./
COPY training/ training/
COPY service/ service/
COPY convserve/ convserve/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --no-index --wheel-dir /wheels .

# --- runtime: slim image, no compilers, no pip cache, no source tree -------------------------
FROM python:3.11.13-slim-bookworm AS runtime

# One BLAS/OpenMP thread per gunicorn worker: WORKERS processes share the CPU limit, and
# oversubscribed BLAS threads only add contention (the forward pass is small).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    BIND=0.0.0.0:8000 \
    WORKERS=2 \
    MODEL_STORE=/models \
    MODEL_NAME=mnist \
    MODEL_ALIAS=production \
    RELOAD_INTERVAL_S=5 \
    DRAIN_SECONDS=5 \
    LOG_LEVEL=info \
    MNIST_DIR=/data \
    TMPDIR=/tmp \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

# A fixed non-root UID/GID, so volume ownership and runAsUser agree everywhere. /models and
# /data belong to it: a named volume mounted there is seeded with this ownership, which lets
# the `train` container publish into the store (the serving containers mount it read-only).
RUN groupadd --system --gid 10001 convserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin convserve \
    && install -d -o 10001 -g 10001 -m 0755 /models /data

# The wheels are bind-mounted from the builder, so they never become a layer of this image.
# The locked dependencies first (hashes checked again), then our wheel, whose requirements
# must then already be satisfied: offline, a dependency missing from the lock fails the build.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels --require-hashes \
        -r /wheels/requirements.lock \
    && pip install --no-cache-dir --no-index --find-links /wheels /wheels/convserve-*.whl

# WORKDIR holds nothing but gunicorn.conf.py (also shipped in the wheel as package data): a
# stable relative path that does not depend on the site-packages location, and no `service/`
# directory in the working directory that could shadow the installed package (gunicorn puts
# its working directory first on sys.path).
WORKDIR /app
COPY service/gunicorn.conf.py gunicorn.conf.py

# The embedded default model: the image serves on its own; a volume on /models replaces it.
COPY --chown=10001:10001 model_store/ /models/

USER 10001:10001
EXPOSE 8000

# Liveness only (no model needed). The start period covers loading and warming the model.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('BIND', '0.0.0.0:8000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# SIGTERM: readiness fails and the server keeps answering for DRAIN_SECONDS, then gunicorn
# stops accepting and answers what it holds and what is queued, for up to --graceful-timeout
# seconds; give `docker stop -t` / the pod grace period more than the two together.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "--config", "gunicorn.conf.py", "--graceful-timeout", "20", "service.app:create_app()"]
