#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server, its URL in MIMIC_TEST_POSTGRES_URL (unless
# that is set already): the test suite and bench/replicas.py use it. PostgreSQL comes from
# Debian's packages (installed here when missing and we may use apt).
set -uo pipefail

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "${MIMIC_TEST_POSTGRES_URL:-}" ]; then
  if [ -z "$(pg_bin)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing PostgreSQL from Debian's packages"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
      >/dev/null) || echo "!! could not install PostgreSQL"
  fi
  bin=$(pg_bin)
  if [ -n "$bin" ]; then
    pgdata=$(mktemp -d /tmp/mimic-pg.XXXXXX)
    port=$((20000 + RANDOM % 20000))
    as_pg=()
    # initdb refuses to run as root.
    if [ "$(id -u)" = 0 ]; then chown postgres "$pgdata"; as_pg=(runuser -u postgres --); fi
    # Two replicas, a trainer and the tests' own connections: more than the default 100.
    if "${as_pg[@]}" "$bin/initdb" -D "$pgdata" -A trust -U mimic >/dev/null \
       && "${as_pg[@]}" "$bin/pg_ctl" -D "$pgdata" -l "$pgdata/log" -w \
            -o "-p $port -k $pgdata -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
            start >/dev/null
    then
      trap '"${as_pg[@]}" "$bin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null; rm -rf "$pgdata"' EXIT
      export MIMIC_TEST_POSTGRES_URL="postgresql://mimic@127.0.0.1:$port/postgres"
      echo "== PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on port $port"
    else
      echo "!! PostgreSQL did not start; see $pgdata/log"
    fi
  fi
fi

"$@"
