# The federation's Redis: Debian bookworm's redis-server (7.0: ACL users with read-only keys
# and selectors), AOF on, as Debian's redis user; capped at 2 GB with noeviction (at the cap
# writes are refused and the roles retry them: an evicted key would be a lost update or model).
ARG BASE=fedq-base:bookworm
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
CMD ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec", "--dir", "/data", \
     "--maxmemory", "2gb", "--maxmemory-policy", "noeviction", "--proto-max-bulk-len", "16mb"]
