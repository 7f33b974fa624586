#!/bin/sh
# Secrets of the compose stack, generated once into deploy/compose/secrets/ (git-ignored):
#   tls/            a CA, the Redis server certificate, one client certificate (hybrid deploy certs)
#   users.acl       ACL users of the zone, passwords as SHA-256 (hybrid deploy redis-acl)
#   users.acl.secrets.env   their clear passwords: pass it to `docker compose --env-file`
#   keyring.json    the zone's key-encryption key (hybrid keys init)
# Re-running keeps what exists (passwords, CA, keyring). Run from the repository root.
set -eu
ZONE="${HYB_ZONE:-eu-west}"
DIR="${1:-deploy/compose/secrets}"
HYBRID="${HYBRID:-hybrid}"
mkdir -p "$DIR"
[ -f "$DIR/tls/ca.key" ] || "$HYBRID" deploy certs --out "$DIR/tls" --client client
"$HYBRID" deploy redis-acl --zone "$ZONE" --out "$DIR/users.acl"
[ -f "$DIR/keyring.json" ] || "$HYBRID" keys init --zone "$ZONE" --keyring "$DIR/keyring.json"
# Inside the containers Redis runs as uid 999 and our images as uid 10001; the keys stay 0600.
if [ "$(id -u)" = 0 ]; then
  chown 999:999 "$DIR/users.acl" "$DIR/tls/server.key"
  chown 10001:10001 "$DIR/tls/client.key" "$DIR/keyring.json"
else
  echo "now run: sudo chown 999:999 $DIR/users.acl $DIR/tls/server.key" \
       "&& sudo chown 10001:10001 $DIR/tls/client.key $DIR/keyring.json"
fi
echo "start with: docker compose --env-file $DIR/users.acl.secrets.env up -d --build"
