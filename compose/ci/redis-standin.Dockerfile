# CI only: Debian's redis-server in place of redis:7.4-alpine (same command line and redis-cli).
ARG BASE_IMAGE=local/python-standin:3.11
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server"]
