#!/usr/bin/env bash
# Install and start what vpsadmind's tests, demo and benchmarks need, on Debian 12 as root.
#
#   scripts/services.sh [mariadb] [mosquitto] [zfs]      (no argument: all three)
#
# - installs the missing Debian packages (apt-get update runs only when something is missing):
#   mariadb-server mariadb-client mosquitto mosquitto-clients zfs-fuse iptables iproute2,
#   and python3-venv when "$PYTHON -m venv" cannot work (no ensurepip);
# - starts each selected service that does not answer yet, without systemd (CI machines and
#   containers have none): MariaDB on /run/mysqld/mysqld.sock and 127.0.0.1:3306, Mosquitto on
#   127.0.0.1:1883, the zfs-fuse daemon (pools are created by the tests on files; nothing is mounted);
# - ensures the DB account vpsadmind/vpsadmind ('vpsadmind'@'localhost' and @'127.0.0.1') with
#   ALL on the databases `vpsadmind%` and PROCESS (the daemon looks up who holds a named lock).
#
# Idempotent and quiet: a second run only checks (well under a second). It prints one line per
# service at the end and exits non-zero if any selected service is not running; a service that
# fails does not keep the others from starting.
set -euo pipefail

readonly DB_USER=vpsadmind DB_PASS=vpsadmind
readonly MQTT_HOST=127.0.0.1 MQTT_PORT=1883
readonly ZFS_PIDFILE=/run/zfs-fuse.pid
PYTHON=${PYTHON:-python3}

err() { printf 'services.sh: %s\n' "$*" >&2; }
die() { err "$*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

usage() {
    echo "usage: $0 [mariadb] [mosquitto] [zfs]   (default: all)"
}

now_us() { echo "${EPOCHREALTIME/./}"; }

# wait_for SECONDS COMMAND...: retry COMMAND every 0.1 s until it succeeds or time is up.
wait_for() {
    local deadline=$(($(now_us) + $1 * 1000000))
    shift
    until "$@"; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# Time since $1 (a now_us value), e.g. "0.21 s".
elapsed() {
    local us=$(($(now_us) - $1))
    printf '%d.%02d s' $((us / 1000000)) $((us % 1000000 / 10000))
}

# Print the last lines of a log file to stderr (for failure messages).
show_tail() {
    local f=$1
    [ -s "$f" ] || return 0
    err "last lines of $f:"
    tail -n 15 "$f" | sed 's/^/    /' >&2
}

# --- arguments ---------------------------------------------------------------------------------
declare -A WANT=()
for arg in "$@"; do
    case $arg in
        mariadb|mosquitto|zfs) WANT[$arg]=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown service '$arg'" ;;
    esac
done
if [ ${#WANT[@]} -eq 0 ]; then
    WANT=([mariadb]=1 [mosquitto]=1 [zfs]=1)
fi
ORDER=()
for s in mariadb mosquitto zfs; do
    [ -n "${WANT[$s]:-}" ] && ORDER+=("$s")
done

declare -A STATE=()      # service -> "running (...)" or "FAILED: ..."
PKG_FAILED=0
declare -A PKGS=(
    [mariadb]="mariadb-server mariadb-client"
    [mosquitto]="mosquitto mosquitto-clients"
    [zfs]="zfs-fuse"
)

# Serialize concurrent runs (e.g. make -j, two terminals). Every command that may leave a daemon
# behind runs with fd 9 closed (9>&-): a daemon inheriting it would hold the lock forever.
LOCK=${TMPDIR:-/tmp}/vpsadmind-services.lock
[ -e "$LOCK" ] || : >"$LOCK"
exec 9<"$LOCK"      # read-only is enough for flock, and works for any user
flock 9

# --- packages ----------------------------------------------------------------------------------
pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

python_venv_works() {
    command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1
}

apt_install() {   # apt_install LOGFILE PKG...
    local log=$1
    shift
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=120 "$@" >>"$log" 2>&1 9>&-
}

install_packages() {
    local wanted=(iptables iproute2) missing=() s p log
    for s in "${ORDER[@]}"; do
        read -ra p <<<"${PKGS[$s]}"
        wanted+=("${p[@]}")
    done
    for p in "${wanted[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    python_venv_works || missing+=(python3-venv)
    [ ${#missing[@]} -gt 0 ] || return 0

    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    is_root || die "missing packages: ${missing[*]}; run as root to install them"

    log=$(mktemp /tmp/vpsadmind-apt.XXXXXX.log)
    if ! DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=120 >"$log" 2>&1; then
        show_tail "$log"
        die "apt-get update failed (full log: $log)"
    fi
    if ! apt_install "$log" "${missing[@]}"; then
        # One bad package must not keep the others out: retry them one by one.
        for p in "${missing[@]}"; do
            apt_install "$log" "$p" || err "could not install $p (log: $log)"
        done
    fi
    local ok=() still=()
    for p in "${missing[@]}"; do
        if pkg_installed "$p"; then ok+=("$p"); else still+=("$p"); fi
    done
    [ ${#ok[@]} -eq 0 ] || echo "installed: ${ok[*]}"
    if [ ${#still[@]} -gt 0 ]; then
        show_tail "$log"
        err "not installed: ${still[*]} (full log: $log)"
        PKG_FAILED=1
    else
        rm -f "$log"
    fi
    python_venv_works || err "'$PYTHON -m venv' cannot work ($PYTHON: $(command -v "$PYTHON" || echo not found));" \
        "the Makefile needs it"
}

# True if all packages of service $1 are installed; else records the failure.
have_packages() {
    local p
    for p in ${PKGS[$1]}; do
        if ! pkg_installed "$p"; then
            STATE[$1]="FAILED: package $p is not installed"
            return 1
        fi
    done
}

# --- MariaDB -----------------------------------------------------------------------------------
mariadb_ping() { mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1; }

mariadb_option() {   # the last --NAME=value the server reads from the config files
    my_print_defaults --mysqld 2>/dev/null | sed -n "s/^--$1=//p" | tail -n 1
}

start_mariadb() {
    local t0 datadir errlog out=/run/mysqld/mariadbd.out log
    t0=$(now_us)
    have_packages mariadb || return 0
    if mariadb_ping; then STATE[mariadb]="running"; return 0; fi
    errlog=$(mariadb_option log-error)
    errlog=${errlog:-$out}
    if pgrep -x mariadbd >/dev/null || pgrep -x mysqld >/dev/null; then
        # Started by someone else and not answering yet (e.g. crash recovery): do not start a second one.
        if wait_for 30 mariadb_ping; then STATE[mariadb]="running (was starting, $(elapsed "$t0"))"; return 0; fi
        show_tail "$errlog"
        STATE[mariadb]="FAILED: mariadbd (pid $(pgrep -x mariadbd | head -n1)) runs but 'mariadb-admin ping' fails"
        return 0
    fi
    if ! is_root; then STATE[mariadb]="FAILED: not running, and starting it needs root"; return 0; fi

    install -d -o mysql -g root -m 755 /run/mysqld
    datadir=$(mariadb_option datadir)
    datadir=${datadir:-/var/lib/mysql}
    if [ ! -d "$datadir/mysql" ]; then
        log=$(mktemp /tmp/vpsadmind-mariadb-install-db.XXXXXX.log)
        if ! mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db >"$log" 2>&1; then
            show_tail "$log"
            STATE[mariadb]="FAILED: mariadb-install-db --datadir=$datadir failed (log: $log)"
            return 0
        fi
        rm -f "$log"
    fi
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile /run/mysqld/ssd.pid \
        --chuid mysql --output "$out" --exec /usr/sbin/mariadbd -- --user=mysql 9>&-
    if wait_for 30 mariadb_ping; then
        STATE[mariadb]="running (started in $(elapsed "$t0"))"
    else
        show_tail "$out"
        [ "$errlog" = "$out" ] || show_tail "$errlog"
        STATE[mariadb]="FAILED: mariadbd started but did not answer 'mariadb-admin ping' within 30 s"
    fi
}

# The account used by the tests, the demo and the benchmarks.
ensure_db_account() {
    local check=(mariadb --connect-timeout=5 -h 127.0.0.1 -P 3306 -u "$DB_USER" -N -B -e 'SHOW GRANTS')
    if is_root; then
        if ! mariadb --connect-timeout=5 <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON \`$DB_USER%\`.* TO '$DB_USER'@'localhost';
GRANT ALL ON \`$DB_USER%\`.* TO '$DB_USER'@'127.0.0.1';
GRANT PROCESS ON *.* TO '$DB_USER'@'localhost';
GRANT PROCESS ON *.* TO '$DB_USER'@'127.0.0.1';
SQL
        then
            STATE[mariadb]="FAILED: could not create the DB account $DB_USER (as root over the socket)"
            return 0
        fi
    fi
    if ! MYSQL_PWD=$DB_PASS "${check[@]}" 2>/dev/null | grep -q 'PROCESS'; then
        STATE[mariadb]="FAILED: '$DB_USER'@127.0.0.1 cannot log in with password '$DB_PASS' or lacks PROCESS"
        is_root || STATE[mariadb]+=" (run as root to create it)"
    fi
}

# --- Mosquitto ---------------------------------------------------------------------------------
mqtt_ping() {
    timeout 5 mosquitto_pub -h "$MQTT_HOST" -p "$MQTT_PORT" -q 0 -t vpsadmind/services/ping -m ping \
        >/dev/null 2>&1
}

start_mosquitto() {
    local t0 conf=/etc/mosquitto/mosquitto.conf log=/var/log/mosquitto/mosquitto.log out
    t0=$(now_us)
    have_packages mosquitto || return 0
    # Wake-ups are a few bytes: without TCP_NODELAY the broker holds each one for the peer's delayed
    # ACK (~40 ms a hop, docs/benchmarks.md). Takes effect when this script (re)starts the broker.
    if is_root && [ -d /etc/mosquitto/conf.d ] && [ ! -e /etc/mosquitto/conf.d/vpsadmind.conf ]; then
        printf '# vpsadmind: deliver wake-ups without Nagle delay\nset_tcp_nodelay true\n' \
            > /etc/mosquitto/conf.d/vpsadmind.conf
    fi
    if mqtt_ping; then STATE[mosquitto]="running"; return 0; fi
    if pgrep -x mosquitto >/dev/null; then
        if wait_for 5 mqtt_ping; then STATE[mosquitto]="running (was starting, $(elapsed "$t0"))"; return 0; fi
        show_tail "$log"
        STATE[mosquitto]="FAILED: mosquitto (pid $(pgrep -x mosquitto | head -n1)) runs but a publish to"
        STATE[mosquitto]+=" $MQTT_HOST:$MQTT_PORT fails (check its listener in $conf)"
        return 0
    fi
    if ! is_root; then STATE[mosquitto]="FAILED: not running, and starting it needs root"; return 0; fi

    # mosquitto drops to user mosquitto before writing its pid file, and exits silently if it cannot.
    install -d -o mosquitto -g mosquitto -m 755 /run/mosquitto
    out=$(mktemp /tmp/vpsadmind-mosquitto.XXXXXX.log)
    if mosquitto -d -c "$conf" >"$out" 2>&1 9>&- && wait_for 10 mqtt_ping; then
        STATE[mosquitto]="running (started in $(elapsed "$t0"))"
        rm -f "$out"
    else
        show_tail "$out"
        show_tail "$log"
        STATE[mosquitto]="FAILED: 'mosquitto -d -c $conf' did not accept a publish on"
        STATE[mosquitto]+=" $MQTT_HOST:$MQTT_PORT within 10 s"
    fi
}

# --- zfs-fuse ----------------------------------------------------------------------------------
zfs_ping() { timeout 10 zpool list >/dev/null 2>&1; }

# After a zfs-fuse crash or SIGKILL its mounts stay behind ("Transport endpoint is not connected").
clear_stale_zfs_mounts() {
    local mnt type rest i mounts=()
    while read -r _ mnt type rest; do
        [[ $type == fuse* ]] || continue
        mnt=$(printf '%b' "$mnt")   # /proc/mounts escapes blanks as \040
        if [[ $type == fuse.zfs* || ($type == fuse* && $mnt == /zfs-kstat) ]]; then
            mounts+=("$mnt")
        fi
    done </proc/mounts
    # Deepest first (reverse mount order).
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[$i]}" 2>/dev/null || err "could not unmount stale ${mounts[$i]}"
    done
}

start_zfs() {
    local t0 out
    t0=$(now_us)
    have_packages zfs || return 0
    if zfs_ping; then STATE[zfs]="running"; return 0; fi
    if pgrep -x zfs-fuse >/dev/null; then
        if ! is_root; then STATE[zfs]="FAILED: zfs-fuse runs, but 'zpool list' fails (not root?)"; return 0; fi
        if wait_for 10 zfs_ping; then STATE[zfs]="running (was starting, $(elapsed "$t0"))"; return 0; fi
        STATE[zfs]="FAILED: zfs-fuse (pid $(pgrep -x zfs-fuse | head -n1)) runs but 'zpool list' fails"
        return 0
    fi
    if ! is_root; then STATE[zfs]="FAILED: not running, and starting it needs root"; return 0; fi

    mkdir -p /run/lock          # without it zfs-fuse exits at once, printing nothing
    clear_stale_zfs_mounts
    rm -f "$ZFS_PIDFILE"
    out=$(mktemp /tmp/vpsadmind-zfs-fuse.XXXXXX.log)
    # Pools in /var/lib/zfs/zpool.cache are imported but deliberately not mounted ("zfs mount -a"):
    # tests make their own pools. /zfs-kstat (statistics) is not needed and would go stale on a crash.
    if ! zfs-fuse --pidfile "$ZFS_PIDFILE" --no-kstat-mount >"$out" 2>&1 9>&-; then
        show_tail "$out"
        STATE[zfs]="FAILED: 'zfs-fuse --pidfile $ZFS_PIDFILE' exited with an error (is /dev/fuse there?)"
    elif wait_for 15 zfs_ping; then
        STATE[zfs]="running (started in $(elapsed "$t0"))"
        rm -f "$out"
    else
        show_tail "$out"
        STATE[zfs]="FAILED: zfs-fuse started but 'zpool list' did not answer within 15 s"
    fi
}

# --- main --------------------------------------------------------------------------------------
install_packages
for s in "${ORDER[@]}"; do
    "start_$s"
done
if [[ -n ${WANT[mariadb]:-} && ${STATE[mariadb]} == running* ]]; then
    ensure_db_account
fi

rc=$PKG_FAILED
for s in "${ORDER[@]}"; do
    printf '%-10s %s\n' "$s" "${STATE[$s]}"
    [[ ${STATE[$s]} == running* ]] || rc=1
done
exit $rc
