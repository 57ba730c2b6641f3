# MLflow tracking server with authentication (mlflow server --app-name basic-auth), a
# Postgres backend store and S3-compatible artifact storage.
#
#   docker build -f docker/mlflow.Dockerfile -t prunegrid/mlflow:3.17.2 .
#
# Nothing secret is baked in. At start, docker/mlflow-entrypoint.sh writes the auth config
# (user store URI, default permission) from the environment; the admin user is created on
# first start from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (MLflow 3.17 has
# no default admin password and refuses to start without one).
FROM python:3.11.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

RUN groupadd --gid 1000 mlflow \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin mlflow

# mlflow[auth] adds Flask-WTF (the basic-auth app); psycopg2 talks to Postgres, boto3 to S3.
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt \
        "mlflow[auth]==3.17.2" psycopg2-binary==2.9.10 boto3==1.35.99 \
 && rm /tmp/constraints.txt

COPY --chmod=755 docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint.sh"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
