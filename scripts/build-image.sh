#!/usr/bin/env bash
# Build the infadapter image (Containerfile) with buildah, without Docker and, if need be, without an
# image registry: the base is then a Debian root made by debootstrap from the Debian mirror.
#
#   bash scripts/build-image.sh [TAG]        # default localhost/infadapter:0.1.0
#
# Needs root, buildah and debootstrap (apt-get install buildah debootstrap), the Debian mirror and
# PyPI. Behind a TLS-intercepting proxy the host's CA bundle is handed to pip for the build only.
# Prints the image name as the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/infadapter:0.1.0}
BASE=${INFADAPTER_BASE_IMAGE:-}
CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
command -v buildah >/dev/null || { echo "build-image: buildah not found: apt-get install buildah" >&2; exit 4; }

if [ -z "$BASE" ]; then
  if buildah pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE=docker.io/library/python:3.11-slim-bookworm
  else
    BASE=localhost/debian-python:bookworm-minbase
    if ! buildah inspect "$BASE" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null || { echo "build-image: no registry and no debootstrap: apt-get install debootstrap" >&2; exit 4; }
      echo "build-image: no image registry reachable: making $BASE with debootstrap (a few minutes)" >&2
      root=$(mktemp -d)
      debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" http://deb.debian.org/debian >&2
      # What an image never reads: the downloaded packages, the package lists, docs, manuals and translations
      # (a third of the root; the python:*-slim images leave them out too).
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
      ctr=$(buildah from scratch)
      tar -C "$root" -cf "$root.tar" .
      buildah add "$ctr" "$root.tar" / >/dev/null
      buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
      buildah commit -q "$ctr" "$BASE" >/dev/null
      buildah rm "$ctr" >/dev/null
      rm -rf "$root" "$root.tar"
    fi
  fi
fi
args=(--isolation chroot --build-arg "PYTHON_IMAGE=$BASE" -t "$TAG" -f Containerfile)
if [ -f "$CA" ]; then
  args+=(--volume "$CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
buildah bud "${args[@]}" . >&2
echo "$TAG"
