#!/usr/bin/env bash
# Image sizes and build times of the two images (`make bench-docker`; needs a running dockerd).
# Prints a Markdown table for BENCHMARKS.md. Cold = --no-cache, with the base image present.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/docker-base-image.sh >/dev/null

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); printf '%.1f' "$(echo "$t1 - $t0" | bc)"; }
median3() { printf '%s\n' "$("$@")" "$("$@")" "$("$@")" | sort -n | sed -n 2p; }
build() { docker build -q -f "docker/$1/Dockerfile" -t "serf-handlers/$1" "${@:2}" .; }
mb() { echo "scale=1; $(docker image inspect -f '{{.Size}}' "$1") / 1000000" | bc; }

cold_lb=$(seconds build haproxy --no-cache)
cold_web=$(seconds build nginx --no-cache)
same_lb=$(median3 seconds build haproxy)  # median of 3 (the first one after a --no-cache build varies)
same_web=$(median3 seconds build nginx)
# A code-only change: the package changes, apt does not run again.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
git ls-files -z | xargs -0 cp --parents -t "$stage"
echo "# bench: a code-only change" >> "$stage/serf_handlers/__init__.py"
code_lb=$(cd "$stage" && seconds docker build -q -f docker/haproxy/Dockerfile -t serf-handlers-bench/haproxy .)
docker rmi -f serf-handlers-bench/haproxy >/dev/null

echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') with \`make bench-docker\` (commit $(git rev-parse --short HEAD), nproc $(nproc), $(docker version -f 'dockerd {{.Server.Version}}'))."
echo
echo "| image | size MB | over the base | cold build s | no-change rebuild s | code-only change s |"
echo "|---|---:|---:|---:|---:|---:|"
base=$(mb debian:bookworm-slim)
echo "| debian:bookworm-slim (debootstrap) | $base | | | | |"
echo "| serf-handlers/haproxy | $(mb serf-handlers/haproxy) | +$(echo "$(mb serf-handlers/haproxy) - $base" | bc) | $cold_lb | $same_lb | $code_lb |"
echo "| serf-handlers/nginx | $(mb serf-handlers/nginx) | +$(echo "$(mb serf-handlers/nginx) - $base" | bc) | $cold_web | $same_web | (no package inside) |"
