# Shared set-up for dev/run and dev/test. Sourced, not executed.
# Every step is idempotent: it checks first and only does what is missing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ODOO_SRC=${ODOO_SRC:-/opt/odoo19}
# Venv, addons link, Odoo data dir and logs live outside the clone so a fresh clone reuses them.
STATE=${EXCHANGE_CONNECTOR_HOME:-$HOME/.local/share/exchange_connector}
PYTHON=${PYTHON:-python3}
DB_USER=${PGUSER:-$(id -un)}
# Unset PGHOST means PostgreSQL's Unix socket: peer authentication works there on a fresh
# Debian cluster, where TCP would ask for a password.
export PGPORT=${PGPORT:-5432}
PG_HOST_ARGS=(${PGHOST:+-h "$PGHOST"} -p "$PGPORT")

# Odoo's own `mail` manifest description is not valid reStructuredText: no docutils noise on install.
export DOCUTILSCONFIG="$REPO/dev/docutils.conf"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "'$*' needs root (no sudo here). Run it once as root, then retry."
  fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "Installing Debian packages: ${missing[*]}"
  command -v apt-get >/dev/null || die "Missing system packages ${missing[*]} and no apt-get to install them."
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

require_odoo() {
  if [ ! -f "$ODOO_SRC/odoo-bin" ] || [ ! -d "$ODOO_SRC/odoo/addons/base" ] || [ ! -d "$ODOO_SRC/addons/mail" ]; then
    die "Odoo 19 Community was not found at ODOO_SRC=$ODOO_SRC.
  Get the Odoo 19.0 Community source (odoo-bin, odoo/, addons/, requirements.txt), e.g.
      git clone --depth 1 --branch 19.0 https://github.com/odoo/odoo.git /opt/odoo19
  or unpack a 19.0 source archive there, then run this command again
  (or point ODOO_SRC at the folder that holds odoo-bin)."
  fi
  grep -q "version_info = (19" "$ODOO_SRC/odoo/release.py" || die "$ODOO_SRC is not Odoo 19 (see $ODOO_SRC/odoo/release.py)."
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -q "${PG_HOST_ARGS[@]}"; then
    say "Starting PostgreSQL"
    local version; version=$(ls /etc/postgresql | sort -V | tail -1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root service postgresql start
    for _ in $(seq 30); do pg_isready -q "${PG_HOST_ARGS[@]}" && break; sleep 1; done
    pg_isready -q "${PG_HOST_ARGS[@]}" || die "PostgreSQL did not start (${PGHOST:-local socket}, port $PGPORT)."
  fi
  if ! psql "${PG_HOST_ARGS[@]}" -d postgres -U "$DB_USER" -tAc 'select 1' >/dev/null 2>&1; then
    say "Creating PostgreSQL role $DB_USER"
    as_root su postgres -c "createuser --superuser '$DB_USER'" || true
    psql "${PG_HOST_ARGS[@]}" -d postgres -U "$DB_USER" -tAc 'select 1' >/dev/null 2>&1 \
      || die "Cannot connect to PostgreSQL as '$DB_USER' (${PGHOST:-local socket}, port $PGPORT). Allow it in pg_hba.conf or set PGHOST/PGUSER."
  fi
}

VENV="$STATE/venv"
ensure_venv() {
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
    || die "Odoo 19 needs Python >= 3.10 ($PYTHON is $("$PYTHON" --version 2>&1))."
  # Build tools and headers for the Odoo requirements that compile (python-ldap, psycopg2).
  apt_install libldap2-dev libsasl2-dev libpq-dev python3-dev
  local stamp; stamp=$(cat "$ODOO_SRC/requirements.txt" "$REPO/requirements.txt" | sha1sum | cut -c1-12)-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$stamp" ]; then return 0; fi
  say "Creating the virtualenv in $VENV (Odoo's requirements + the addon's)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel "setuptools<81" packaging
  "$VENV/bin/python" "$REPO/dev/install_requirements.py" "$ODOO_SRC/requirements.txt"
  "$VENV/bin/python" -m pip install -q -r "$REPO/requirements.txt"
  "$VENV/bin/python" -m pip check
  echo "$stamp" > "$VENV/.stamp"
}

ensure_test_requirements() {
  # OCA queue_job for the tests of the queue_job mode (requirements-test.txt), next to Odoo's
  # and the addon's requirements; --no-deps, as it declares Odoo itself, installed from source here.
  "$VENV/bin/python" -c 'import importlib.util as u, openupgradelib; assert u.find_spec("odoo.addons.queue_job")' \
    2>/dev/null && return 0
  say "Installing the test requirements (OCA queue_job)"
  "$VENV/bin/python" -m pip install -q --no-deps -r "$REPO/requirements-test.txt"
}

ADDONS_LINK_DIR="$STATE/addons"
ensure_addon_link() {
  # Odoo finds an addon by its folder name; the clone may be called anything.
  mkdir -p "$ADDONS_LINK_DIR"
  ln -sfn "$REPO" "$ADDONS_LINK_DIR/exchange_connector"
}
ADDONS_PATH() { echo "$ODOO_SRC/addons,$ODOO_SRC/odoo/addons,$ADDONS_LINK_DIR"; }

ensure_chromium() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
    || apt_install chromium
}

setup_all() {
  require_odoo
  ensure_postgres
  ensure_venv
  ensure_addon_link
  mkdir -p "$STATE/data" "$STATE/logs"
}

odoo_bin() {
  # Odoo 19 takes only --addons-path before its sub-command ("server" when none is given).
  local command=server
  case "${1:-}" in shell|server|module|db|neutralize|populate) command=$1; shift ;; esac
  "$VENV/bin/python" "$ODOO_SRC/odoo-bin" --addons-path="$(ADDONS_PATH)" "$command" --data-dir="$STATE/data" \
    ${PGHOST:+--db_host="$PGHOST"} --db_port="$PGPORT" --db_user="$DB_USER" "$@"
}

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
