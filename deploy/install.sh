#!/bin/sh
# Install llmlb as a systemd service on a bare-metal machine:
#   deploy/install.sh --node --router-url http://router:32768 --token TOKEN [--from SOURCE]
#   deploy/install.sh --router [--from SOURCE]
# SOURCE: what pip installs (a wheel, a clone; default: this script's checkout).
# It creates the user llmlb, a virtualenv in /opt/llmlb with llmlb (and, on a node, the engine
# build for its GPUs), the unit in /etc/systemd/system, its settings in /etc/llmlb (the token
# readable by root alone), then enables and starts the service. --root DIR installs into DIR
# instead of / (no user, engine or systemctl: for images and tests). Run it again to upgrade.
set -eu

part=""; root=""; source=""; router_url=""; token=""
here=$(cd "$(dirname "$0")/.." && pwd)
while [ $# -gt 0 ]; do
    case "$1" in
        --node) part=node ;;
        --router) part=router ;;
        --root) root=${2:?--root needs a folder}; shift ;;
        --from) source=${2:?--from needs a wheel or a folder}; shift ;;
        --router-url) router_url=${2:?--router-url needs a URL}; shift ;;
        --token) token=${2:?--token needs the node token}; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$part" ] || { echo "install.sh: say --node or --router" >&2; exit 2; }
if [ "$part" = node ] && { [ -z "$router_url" ] || [ -z "$token" ]; }; then
    echo "install.sh: a node needs --router-url and --token (the router's node_token file)" >&2
    exit 2
fi
source=${source:-$here}
python=${PYTHON:-python3}

if [ -z "$root" ] && ! id llmlb >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/llmlb --shell /usr/sbin/nologin llmlb
fi
echo "installing llmlb from $source into $root/opt/llmlb"
[ -x "$root/opt/llmlb/bin/python" ] || "$python" -m venv "$root/opt/llmlb"
"$root/opt/llmlb/bin/python" -m pip install --quiet --upgrade "$source"
if [ "$part" = node ] && [ -z "$root" ]; then
    "$root/opt/llmlb/bin/llmlb" engine install auto
fi

mkdir -p "$root/etc/systemd/system" "$root/etc/llmlb"
cp "$here/deploy/systemd/llmlb-$part.service" "$root/etc/systemd/system/"
if [ "$part" = node ]; then
    umask 077
    printf 'LLMLB_ROUTER=%s\nLLMLB_NODE_TOKEN=%s\n' "$router_url" "$token" > "$root/etc/llmlb/node.env"
    chmod 600 "$root/etc/llmlb/node.env"
fi
if [ -z "$root" ]; then
    systemctl daemon-reload
    systemctl enable --now "llmlb-$part"
    echo "llmlb-$part is running: systemctl status llmlb-$part"
else
    echo "installed into $root (not started)"
fi
