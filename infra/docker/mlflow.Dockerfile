# The MLflow server with its basic-auth app and finmerge's protected-alias rule (the `finmerge-auth` app,
# finmerge/authz/): finmerge is installed without its dependencies, the server needs only that module.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]>=3.0" "psycopg2-binary>=2.9" "boto3>=1.34"
WORKDIR /opt/finmerge
COPY pyproject.toml README.md ./
COPY finmerge finmerge
RUN pip install --no-cache-dir --no-deps .
EXPOSE 5000
