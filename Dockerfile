# syntax=docker/dockerfile:1
# mtserve: the HTTP service, the Argos and CTranslate2 importers, and the default model. No torch,
# no compiler in the final image.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the runtime's C modules (service/runtime/_common_step.c, _denormals.c), in this stage
# only. Debian's security updates move libc6-dev's version, so the packages are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY requirements/runtime.lock /src/requirements/runtime.lock
RUN /opt/venv/bin/pip install --no-cache-dir -r /src/requirements/runtime.lock
COPY pyproject.toml README.md /src/
COPY service /src/service
COPY export /src/export
COPY model /src/model
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /src \
    && /opt/venv/bin/python -c "import service.runtime._common_step, service.runtime._denormals"

FROM python:3.11-slim-bookworm AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mtserve \
    && mkdir -p /var/cache/mtserve/packed /models && chown -R 10001 /var/cache/mtserve /models
COPY --from=build /opt/venv /opt/venv
COPY artifacts/default /app/artifacts/default
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MTSERVE_MODEL_DIR=/app/artifacts/default \
    MTSERVE_PACKED_DIR=/var/cache/mtserve/packed \
    MTSERVE_HOST=0.0.0.0 \
    MTSERVE_PORT=8000
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
# dumb-init (from runtime.lock) is PID 1: it forwards SIGTERM so the service drains, and reaps children.
ENTRYPOINT ["dumb-init", "--"]
CMD ["mtserve", "serve"]
