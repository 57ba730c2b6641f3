#!/bin/sh
# Start `mlflow server --app-name basic-auth` with its auth config written from the
# environment (MLflow reads that config from the INI file named by MLFLOW_AUTH_CONFIG_PATH,
# whose user-store URI cannot come from a variable).
#
# Read by MLflow itself:
#   MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION   (mlflow server's options)
#   MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD   (the admin user, created on the
#       first start against an empty user store; ignored once it exists)
#   MLFLOW_FLASK_SERVER_SECRET_KEY                           (CSRF key, same on every replica)
#   MLFLOW_SERVER_ALLOWED_HOSTS                              (Host headers to accept)
# Written into the config here:
#   MLFLOW_AUTH_DATABASE_URI        user store (users, permissions), e.g. a Postgres database
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what users get on resources they did not create (READ)
set -eu

: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI to the auth user store (postgresql://...)}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set MLFLOW_AUTH_ADMIN_USERNAME (the admin user MLflow creates on first start)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. openssl rand -hex 32)}"

config="${MLFLOW_AUTH_CONFIG_PATH:-${HOME}/basic_auth.ini}"
umask 077
cat > "${config}" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
export MLFLOW_AUTH_CONFIG_PATH="${config}"

exec mlflow server --app-name basic-auth "$@"
