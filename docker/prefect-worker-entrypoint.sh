#!/bin/sh
# Entry point of the Prefect worker image.
#
#   worker (default): join the Ray cluster at RAY_ADDRESS as a node with no CPUs and no GPUs,
#     then run the Prefect worker. A Ray driver (here: each flow run) must run on a node of
#     its cluster; with no resources of its own this node never receives training work.
#     The work pool is created from infra/stack/prefect/work-pool.json if the server lacks it.
#   anything else: run it as given (the compose stack's Prefect server uses this image with
#     `prefect server start ...`).
set -eu

if [ "$#" -gt 0 ] && [ "$1" != "worker" ]; then
    exec "$@"
fi
[ "$#" -gt 0 ] && shift

: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server API, e.g. http://prefect-server:4200/api}"
if [ -n "${RAY_ADDRESS:-}" ]; then
    ray start --address="${RAY_ADDRESS}" --num-cpus=0 --num-gpus=0 --disable-usage-stats
fi
exec prefect worker start \
    --pool "${PRUNEGRID_WORK_POOL:-prunegrid-process}" --type process \
    --base-job-template "${PRUNEGRID_ROOT}/infra/stack/prefect/work-pool.json" \
    --with-healthcheck --install-policy never "$@"
