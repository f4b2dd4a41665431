# mmsearch server image. Build context: the repository root.
#
#   docker build -t mmsearch .
#   docker run --rm -v mmsearch-data:/data mmsearch keys create --keys-file /data/keys.json --tenant acme --scopes read,write
#   docker run -p 50051:50051 -v mmsearch-data:/data -e MMSEARCH_KEYS_FILE=/data/keys.json mmsearch
#   docker run ... mmsearch serve --bundle openclip:ViT-B-32/laion2b_s34b_b79k
#
# The server binds 0.0.0.0 inside the container, so it refuses to start without API keys
# (MMSEARCH_KEYS_FILE) unless told MMSEARCH_INSECURE=1 (a private network you trust).
# Settings come from MMSEARCH_* variables (README); the port is MMSEARCH_PORT, which the health
# check reads too. The container runs as an unprivileged user (uid 10001) that owns /data; a bind
# mount must be writable by that uid.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# The dependencies first, in a layer of their own that is rebuilt only when pyproject.toml changes.
# They are read from pyproject.toml, so the image gets the same pins as `make install`: torch,
# torchvision and torchaudio from the package registry (CUDA builds; they run on CPU as well).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# The five packages and what their build reads; tests, benchmarks and the rest stay out.
COPY README.md ./
COPY mmsearch ./mmsearch
COPY encoders ./encoders
COPY indexer ./indexer
COPY server ./server
COPY trainer ./trainer
# Then a smoke test: the installed package alone (-I keeps /src off the path) loads the tiny bundle.
RUN pip install --no-deps . \
    && python -I -c "from encoders.bundle import load_bundle; print(load_bundle('tiny', device='cpu').bundle_id)"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MMSEARCH_HOST=0.0.0.0 \
    MMSEARCH_PORT=50051 \
    MMSEARCH_DATA=/data \
    MMSEARCH_BUNDLE=tiny
RUN groupadd --system --gid 10001 mmsearch \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/mmsearch mmsearch \
    && mkdir /data \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
# Numeric, so that a runtime that checks for a non-root user (Kubernetes runAsNonRoot) can tell.
USER 10001:10001
WORKDIR /home/mmsearch
VOLUME ["/data"]
EXPOSE 50051
# grpc.health.v1 Check against the server itself; loading a large bundle can take a while.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "mmsearch health --server 127.0.0.1:${MMSEARCH_PORT} --timeout 5 || exit 1"]
ENTRYPOINT ["mmsearch"]
CMD ["serve"]
