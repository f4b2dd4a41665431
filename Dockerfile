# mmsearch server image. Build context: the repository root.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mmsearch ./mmsearch
COPY encoders ./encoders
COPY indexer ./indexer
COPY server ./server
RUN pip install --no-cache-dir .
EXPOSE 50051
ENTRYPOINT ["mmsearch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051"]
