# garrison's image: the `garrison` CLI (workers, beat, migrations, HTTP ingest) and Celery's Flower.
# docker-compose.yml runs every service from it. For your own automations, build on it:
#
#   FROM garrison:latest
#   COPY myapp /app/myapp            # then GARRISON_AUTOMATIONS=myapp.automations
#
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a copy of the source, then drop the copy: what runs is the installed package, with the
# migrations it ships. [http] brings FastAPI and uvicorn for `garrison serve`; Flower is a core dependency.
COPY pyproject.toml README.md /src/
COPY garrison /src/garrison
RUN pip install "/src[http]" && rm -rf /src

# Never run as root. /app is where automation modules go; it is on the import path of every process
# (worker, beat, Flower, healthchecks), not only of `garrison` itself.
RUN useradd --create-home --uid 10001 --user-group garrison
WORKDIR /app
ENV PYTHONPATH=/app \
    GARRISON_DATA_DIR=/home/garrison/.garrison
USER garrison

EXPOSE 8000 5555
CMD ["garrison", "worker"]
