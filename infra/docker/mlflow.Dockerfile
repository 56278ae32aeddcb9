FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow>=3.0" "psycopg2-binary>=2.9" "boto3>=1.34"
EXPOSE 5000
