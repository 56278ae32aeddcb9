#!/bin/sh
# One-shot: buckets, one S3 user per service with its bucket's policy (infra/policies/). The only place the
# MinIO root keys are used; they arrive as MC_HOST_local in the environment, never on a command line. The
# services' own keys are passed to `mc admin user add` inside this short-lived container only.
set -eu
mc mb --ignore-existing local/mlflow local/finmerge
for who in worker mlflow; do
  mc admin policy create local "finmerge-$who" "/policies/$who-s3.json"
done
mc admin user add local "$WORKER_S3_ACCESS_KEY" "$WORKER_S3_SECRET_KEY"
mc admin user add local "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"
mc admin policy attach local finmerge-worker --user "$WORKER_S3_ACCESS_KEY" || true  # already attached
mc admin policy attach local finmerge-mlflow --user "$MLFLOW_S3_ACCESS_KEY" || true
echo "buckets, users and policies ready"
