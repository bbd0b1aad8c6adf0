#!/usr/bin/env bash
# A Debian bookworm base image made here, for a machine whose engine can pull nothing: debootstrap (from
# Debian's own archive) + `docker import`. Stands in for debian:bookworm-slim under both CI images
# (Dockerfile.stub, and Dockerfile.fastwan's runtime stage with BASE_IMAGE=...). Slim like that image: no
# docs, man pages or locales, no apt lists.
#
#   container_test/base_image.sh TAG    # builds TAG unless the engine already has it; prints nothing else
set -euo pipefail

tag="${1:?usage: base_image.sh TAG}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$tag" >/dev/null 2>&1; then
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "base_image.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
fi

root="$(mktemp -d /tmp/fastwan-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
log="$root.log"
if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$log" 2>&1; then
    echo "base_image.sh: debootstrap failed; the last lines of $log:" >&2
    tail -n 5 "$log" >&2
    exit 1
fi
rm -f "$log"

cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# What debian:bookworm-slim leaves out of every later install too.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/info/*
SLIM
echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
chmod 755 "$root" # mktemp made it 0700: it becomes the image's /
tar -C "$root" --numeric-owner -c . | docker import --change 'CMD ["bash"]' - "$tag" >/dev/null
