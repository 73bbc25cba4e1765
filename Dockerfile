# syntax=docker/dockerfile:1.7
# One image for every process: `healingwork <intake|scheduler|dispatcher|operator|migrate|job|sequences|clients>`.
# Built for a read-only root filesystem: nothing is written outside /tmp at run time (mount an emptyDir
# there), bytecode is compiled at build time, and the process runs as the numeric user 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# uv comes from its official image, pinned to the version that wrote uv.lock.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /uvx /bin/
# Compile bytecode now because the runtime filesystem is read-only; copy (not hard-link) out of the
# cache mount; use the base image's interpreter so the venv's python symlink resolves in the final stage.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the lock file changes.
# The bind targets are absolute: Debian bookworm's buildah (1.28) rejects relative ones.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/src/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/src/pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project --extra sentry
COPY pyproject.toml uv.lock README.md ./
COPY services ./services
COPY operators ./operators
COPY proto ./proto
# --no-editable installs the project into site-packages, so the final stage needs the venv and nothing else.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --extra sentry

FROM ${PYTHON_IMAGE} AS base
# A passwd entry for 10001: libpq looks the user up when a URL names no user, and getpass needs it too.
RUN groupadd --system --gid 10001 healingwork \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin healingwork
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["healingwork"]
CMD ["--help"]

# `skaffold dev -p dev` builds this target: the sources sit in /app, owned by the runtime user so file
# sync can write them, and PYTHONPATH puts them ahead of the installed copy. The dev profile of the chart
# turns readOnlyRootFilesystem off for the same reason. Never shipped.
FROM base AS dev
COPY --chown=10001:10001 services ./services
COPY --chown=10001:10001 operators ./operators
COPY --chown=10001:10001 proto ./proto
ENV PYTHONPATH=/app

# The default (last) target: what CI builds and production runs.
FROM base AS runtime
