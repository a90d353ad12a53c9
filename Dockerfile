# One image recipe for every package of the workspace: build with
#   docker build --build-arg PACKAGE=cmrqc-cli -t cmrqc/cli .
# Only PACKAGE and its own dependencies are installed (the ingest image carries no torch).
FROM python:3.11-slim AS build
ARG PACKAGE=cmrqc-cli
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY . /src
RUN uv sync --frozen --no-dev --no-editable --package "${PACKAGE}"

FROM python:3.11-slim
# The state directories exist in the image, owned by the service user, so that a named volume
# mounted there (compose) starts out writable by it; on Kubernetes fsGroup 10001 does the same.
RUN useradd --system --uid 10001 cmrqc \
    && mkdir -p /var/lib/cmrqc/ingest-spool /var/cache/cmrqc/rca-references \
    && chown -R cmrqc:cmrqc /var/lib/cmrqc /var/cache/cmrqc
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER cmrqc
EXPOSE 8080
CMD ["cmrqc", "--help"]
