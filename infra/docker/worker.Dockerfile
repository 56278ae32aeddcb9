# The Prefect worker image: finmerge and its pins installed (CPU torch; use a CUDA base for GPU workers).
FROM python:3.11-slim
WORKDIR /opt/finmerge
COPY pyproject.toml constraints.txt README.md ./
COPY finmerge finmerge
COPY flows flows
COPY tasks tasks
COPY configs configs
COPY prefect.yaml ./
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu . \
 && python -m compileall -q finmerge flows tasks
ENV FINMERGE_HOME=/opt/finmerge
