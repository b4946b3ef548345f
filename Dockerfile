# clipdebias on NVIDIA GPUs.
#
# CUDA user-space libraries come from the pip wheels: torch 2.9.1 from PyPI is built for CUDA 12.8,
# and PyPI's faiss-gpu wheels need CUDA 12 (>= 12.6) runtime libraries, which the torch wheel
# already pulls in. The host needs an NVIDIA driver >= 570 (CUDA 12.8) and the NVIDIA Container
# Toolkit; run with `docker run --gpus all ...` (see docs/docker.md).
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1
ARG FAISS_GPU_VERSION=1.15.1

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The large, rarely changing layer first: torch + torchvision built for CUDA 12.8.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY clipdebias ./clipdebias

# Install the package (non-editable), then swap the CPU faiss it depends on for the GPU build:
# both provide the same `faiss` module, so only one of them may be installed.
RUN pip install . \
    && pip uninstall -y faiss-cpu \
    && pip install "faiss-gpu==${FAISS_GPU_VERSION}" \
    && python -c "import faiss, clipdebias.cli; print('faiss', faiss.__version__)"

# A non-root user; weights (HF_HOME, TORCH_HOME) and embedding caches live on one volume.
RUN useradd --create-home --uid 1000 clipdebias \
    && mkdir -p /cache /workspace \
    && chown clipdebias:clipdebias /cache /workspace
ENV CLIPDEBIAS_CACHE=/cache/clipdebias \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch
VOLUME ["/cache"]
USER 1000:1000
WORKDIR /workspace

ENTRYPOINT ["clipdebias"]
CMD ["--help"]
