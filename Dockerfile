# The bronze server image (see docker-compose.yml).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends ipxe ipmitool && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY pxe ./pxe
COPY bmc ./bmc
COPY agent ./agent
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/bronze bronze \
    && mkdir -p /var/lib/bronze && chown bronze /var/lib/bronze
USER bronze
ENV BRONZE_DATA_DIR=/var/lib/bronze BRONZE_API_HOST=0.0.0.0
EXPOSE 8080
CMD ["bronze", "serve"]
