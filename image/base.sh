#!/usr/bin/env bash
# A local Python base image for machines that reach Debian's and PyPI's package servers but no
# container registry: a debootstrapped Debian bookworm with Python 3.11 and a venv on PATH, built with
# podman (buildah, chroot isolation). The machine's CA bundle and its local wheel directory (the
# on-disk torch wheel) are baked in so pip inside the build can use them.
#   image/base.sh [TAG]        (default localhost/sherlock-python:3.11-bookworm; skipped if present)
set -euo pipefail
tag=${1:-localhost/sherlock-python:3.11-bookworm}
if podman image exists "$tag"; then
    echo "$tag exists"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! podman image exists localhost/debian:bookworm; then
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates bookworm \
        "$work/rootfs" http://deb.debian.org/debian > "$work/debootstrap.log" || { tail -20 "$work/debootstrap.log"; exit 1; }
    tar -C "$work/rootfs" -c . | podman import - localhost/debian:bookworm
    rm -rf "$work/rootfs"
fi
mkdir -p "$work/context/wheels"
cp /etc/ssl/certs/ca-certificates.crt "$work/context/"
wheels=${PIP_FIND_LINKS:-}
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
    cp "$wheels"/torch-*.whl "$work/context/wheels/" 2>/dev/null || true
fi
cat > "$work/context/Containerfile" <<'CONTAINERFILE'
FROM localhost/debian:bookworm
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY wheels /wheels
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_FIND_LINKS=/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180
CONTAINERFILE
podman build --isolation chroot -t "$tag" "$work/context"
