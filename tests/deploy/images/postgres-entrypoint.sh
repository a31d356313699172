#!/bin/sh
# The official image's first start: a cluster with POSTGRES_USER (password-protected over
# the network) and POSTGRES_DB; then the server, listening on every address.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    passwords=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$passwords"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$passwords" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$passwords"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl --pgdata="$PGDATA" --wait --options="-c listen_addresses=''" start >/dev/null
    database=${POSTGRES_DB:-$POSTGRES_USER}
    if [ "$database" != postgres ]; then
        createdb --username="$POSTGRES_USER" --maintenance-db=postgres "$database"
    fi
    pg_ctl --pgdata="$PGDATA" --wait stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
