# The canarist image: the operator (`kopf run -m canarist.handlers`) and the judge service
# (`canarist judge serve`) from one Python package. Build: docker build -t canarist:dev .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# A fixed non-root user; the chart also sets runAsNonRoot and a read-only root filesystem.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin canarist
USER 10001
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["kopf", "run", "-m", "canarist.handlers", "--standalone"]
