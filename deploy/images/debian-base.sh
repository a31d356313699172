#!/bin/sh
# A Python base image made from Debian's packages alone, for machines that reach no container
# registry (air-gapped builds, and this project's CI): Debian bookworm's minbase with its
# Python 3.11, as python:3.11-slim-bookworm has. The CA certificates are this machine's, so
# pip inside a build trusts what this machine trusts (a proxy's CA included).
#
#   deploy/images/debian-base.sh [TAG] && docker build --build-arg BASE=TAG -t llmlb .
#
# Needs mmdebstrap and podman (or docker: set CONTAINER=docker).
set -eu
tag=${1:-localhost/llmlb-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
container=${CONTAINER:-podman}
bundle=/etc/ssl/certs/ca-certificates.crt
rootfs=$(mktemp --suffix=.tar)
trap 'rm -f "$rootfs"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook="if [ -f $bundle ]; then cp $bundle \"\$1$bundle\"; fi" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$rootfs" "$mirror"
"$container" import --change 'CMD ["/bin/bash"]' \
    --change "ENV PIP_CERT=$bundle" "$rootfs" "$tag" >/dev/null
echo "$tag"
