FROM python:3.11-slim
WORKDIR /app
# Every distribution at its locked version, hashes checked, nothing resolved at build time (scripts/setup.sh)
COPY locks/backend.txt requirements-label-studio-ml.txt requirements-offline-model.txt ./
RUN pip install --no-cache-dir --no-deps --require-hashes \
    -r backend.txt -r requirements-label-studio-ml.txt -r requirements-offline-model.txt
COPY freesel_backend ./freesel_backend
EXPOSE 9090
CMD ["python", "-m", "freesel_backend", "serve"]
