#!/usr/bin/env bash
# The container test: builds the project's Dockerfile as it is and takes docker-compose.yml through what a user
# does with it (generate a key, start, open the homepage, use the command line beside the server, air-gapped
# mode, restart, a volume left root-owned by MollySocket's image). Run by .ci/run after the vitest suite.
#
# It needs neither a Docker engine nor a container registry, only Debian's mirror and the npm registry:
# - podman (rootful) builds and runs the image, and serves a Docker-compatible API socket that docker-compose
#   (v1, Debian's package) drives;
# - the base images the Dockerfile starts from are made here when missing: debian:<suite>-slim with
#   debuerreotype (the tool Debian's official images are made with), and node:<major>-<suite>-slim from it with
#   this machine's own Node and npm, built with NODE_VERSION=<this machine's major version>.
# Containers use the host's network, so everything they reach is on loopback: the Signal URL points at a
# closed loopback port, and a small push receiver on loopback takes the test pushes.
#
# Skipped, with the reason, where it cannot run: not root, no apt-get, overlay mounts not allowed.
# Exits non-zero on the first failed step. Set MS_CONTAINER_KEEP=1 to keep the scratch directory.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

skip() { echo "container test skipped: $*"; exit 0; }
[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" = 0 ] || skip "it needs root (rootful podman)"
command -v apt-get >/dev/null || skip "it installs podman with apt-get (Debian)"
probe=$(mktemp -d)
mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
if ! unshare --mount sh -c "mount -t overlay overlay -o lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work $probe/merged" 2>/dev/null; then
  rm -rf "$probe"
  skip "overlay mounts are not allowed here"
fi
rm -rf "$probe"

W=$(mktemp -d /tmp/ms-container-XXXXXX)
t_start=$(date +%s)
timings=()
phase_name='' phase_start=0
phase() {
  local now; now=$(date +%s)
  [ -n "$phase_name" ] && timings+=("$phase_name $((now - phase_start))s")
  phase_name=$1 phase_start=$now
  [ -n "$phase_name" ] && echo "=== container test: $phase_name"
  return 0
}
fail() { echo "container test FAILED: $*" >&2; exit 1; }

service_pid='' receiver_pid=''
cleanup() {
  local rc=$?
  if [ -S "$W/podman.sock" ]; then dc down --timeout 2 >/dev/null 2>&1 || :; fi
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null
  if [ "${MS_CONTAINER_KEEP:-}" = 1 ] || [ $rc != 0 ]; then echo "scratch directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

phase "packages"
packages=(podman runc conmon netavark aardvark-dns iptables docker-compose python3-yaml debuerreotype debootstrap
  curl iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$W/apt.log" ||
    { tail -20 "$W/apt.log"; fail "apt-get install"; }
fi
echo "$(podman --version), docker-compose $(docker-compose version --short)"

# Settings this machine needs, through CONTAINERS_CONF (nothing in /etc is changed): podman's default ulimits
# cannot be set without CAP_SYS_RESOURCE, and crun refuses a hybrid cgroup layout where runc does not.
cat >"$W/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[network]
network_backend = "netavark"
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$W/containers.conf

# The image the Dockerfile starts from, for this machine's Node major version.
node_bin=$(readlink -f "$(command -v node)")
node_major=$(node -p 'process.versions.node.split(".")[0]')
from=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$REPO/Dockerfile" | sort -u)
[[ $from =~ ^node:\$\{NODE_VERSION\}-([a-z]+)-slim$ ]] ||
  fail "the Dockerfile should start FROM node:\${NODE_VERSION}-<debian suite>-slim only, found: $from"
suite=${BASH_REMATCH[1]}
debian_image=docker.io/library/debian:$suite-slim
node_image=docker.io/library/node:$node_major-$suite-slim

phase "debian base"
if podman image exists "$debian_image"; then
  echo "$debian_image: present"
else
  echo "making $debian_image with debuerreotype"
  rootfs=$W/debian/rootfs
  mkdir -p "$W/debian"
  debuerreotype-init --non-debian --keyring /usr/share/keyrings/debian-archive-keyring.gpg \
    "$rootfs" "$suite" http://deb.debian.org/debian >"$W/debian/init.log" 2>&1 || { tail -20 "$W/debian/init.log"; fail "debuerreotype-init"; }
  debuerreotype-minimizing-config "$rootfs"
  keyring=$(ls "$rootfs"/usr/share/keyrings/debian-archive-keyring.{pgp,gpg} 2>/dev/null | head -1)
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: ${keyring#"$rootfs"}

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: ${keyring#"$rootfs"}
EOF
  debuerreotype-apt-get "$rootfs" update -qq
  debuerreotype-apt-get "$rootfs" dist-upgrade -yqq >"$W/debian/upgrade.log" 2>&1
  debuerreotype-slimify "$rootfs"
  debuerreotype-recalculate-epoch "$rootfs"
  debuerreotype-tar "$rootfs" "$W/debian/rootfs.tar"
  podman import -q --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$W/debian/rootfs.tar" "$debian_image" >/dev/null
  rm -rf "$rootfs"
fi

phase "node base"
if podman image exists "$node_image"; then
  echo "$node_image: present"
else
  # As the official node image lays it out (/usr/local, user node uid 1000), with this machine's Node and npm.
  echo "making $node_image from this machine's Node $(node -v)"
  ctx=$W/node
  prefix=$(dirname "$(dirname "$node_bin")")
  npm_dir=$(readlink -f "$(dirname "$(readlink -f "$(command -v npm)")")/..")
  mkdir -p "$ctx/local/bin" "$ctx/local/include" "$ctx/local/lib/node_modules"
  cp -a "$node_bin" "$ctx/local/bin/node"
  cp -a "$prefix/include/node" "$ctx/local/include/node"
  cp -a "$npm_dir" "$ctx/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$ctx/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$ctx/local/bin/npx"
  cat >"$ctx/Containerfile" <<EOF
FROM $debian_image
RUN groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
COPY local/ /usr/local/
RUN node --version && npm --version
CMD ["node"]
EOF
  podman build -q --format docker --network host -t "$node_image" "$ctx" >/dev/null
fi

phase "build"
# Build-only npm settings, mounted over /root for the RUN steps and never left in the image: the CA this
# machine's TLS-intercepting proxy signs with, and the Node headers of the base image (better-sqlite3 can
# reach neither a prebuilt binary nor the header download here).
mkdir -m 700 "$W/build-home"
{
  cafile=$(npm config get cafile 2>/dev/null || :)
  if [ -f "$cafile" ]; then cp "$cafile" "$W/build-home/ca.crt" && echo "cafile=/root/ca.crt"; fi
  echo "nodedir=/usr/local"
} >"$W/build-home/.npmrc"
size_of() { podman image inspect "$1" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}'; }
# --format docker: podman's default OCI format drops HEALTHCHECK.
podman build --format docker --network host --build-arg "NODE_VERSION=$node_major" -v "$W/build-home:/root" \
  -t mollysocket:latest "$REPO" >"$W/build.log" 2>&1 || { tail -40 "$W/build.log"; fail "podman build"; }
image_size=$(size_of mollysocket:latest)
echo "mollysocket:latest on $node_image: $image_size"
root_files() { podman run --rm --network none --entrypoint ls "$1" -A /root 2>/dev/null || fail "podman run of $1"; }
[ "$(root_files mollysocket:latest)" = "$(root_files "$node_image")" ] || fail "the build left files in the image's /root"

# --- compose, in a project directory of its own, on the host's network --------------------------------------
port=$(node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
push_port=$(node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
project=$W/compose
mkdir -p "$project"
# The compose file with the host's network instead of published ports (docker-compose refuses ports with
# network_mode: host), bound to loopback as "127.0.0.1:8020:8020" is, and the image built above.
python3 - "$REPO/docker-compose.yml" "$project/docker-compose.yml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
svc = doc["services"]["mollysocket"]
assert svc.pop("ports") == ["127.0.0.1:8020:8020"], "docker-compose.yml publishes other ports than 127.0.0.1:8020"
svc.pop("build")
svc["image"] = "mollysocket:latest"  # the image built above, not the released one the file names
svc["network_mode"] = "host"
svc["environment"]["MOLLY_HOST"] = "127.0.0.1"
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
EOF
cat >"$project/loopback.yml" <<EOF
services:
  mollysocket:
    environment:
      MOLLY_PORT: "$port"
      MOLLY_SIGNAL_URL: "ws://127.0.0.1:9/v1/websocket/"
      MOLLY_ALLOWED_ENDPOINTS: '["http://127.0.0.1:$push_port"]'
EOF
printf 'services:\n  mollysocket:\n    environment:\n      MOLLY_WEBSERVER: "false"\n' >"$project/airgapped.yml"
podman system service --time=0 "unix://$W/podman.sock" >"$W/podman-service.log" 2>&1 </dev/null &
service_pid=$!
for _ in $(seq 100); do [ -S "$W/podman.sock" ] && break; sleep 0.1; done
export DOCKER_HOST=unix://$W/podman.sock
compose_files=(-f "$project/docker-compose.yml" -f "$project/loopback.yml")
dc() { docker-compose "${compose_files[@]}" --project-directory "$project" -p mstest "$@"; }
ctr=mstest_mollysocket_1
base=http://127.0.0.1:$port

# podman runs HEALTHCHECK from systemd timers; without systemd the test runs the same check itself.
wait_healthy() {
  local s; s=$(date +%s)
  until podman healthcheck run "$ctr" >/dev/null 2>&1; do
    (($(date +%s) - s < 60)) || { dc logs --no-color | tail -20; fail "not healthy after 60 s"; }
    sleep 1
  done
  echo "healthy after $(($(date +%s) - s)) s"
}
vapid_on_homepage() { curl -fsS -A 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' "$base/" | grep -o 'vapid=[^&"]*' | head -1; }

phase "compose: cluster example"
# Several instances need a postgres image this machine cannot pull: the example is checked as a compose file only.
docker-compose -f "$REPO/deploy/compose/cluster.yml" config -q || fail "deploy/compose/cluster.yml is not a valid compose file"
docker-compose -f "$REPO/deploy/compose/cluster.yml" config | grep -q 'MOLLY_INSTANCE_NAME: relay-2' ||
  fail "deploy/compose/cluster.yml: the second instance has no name of its own"

phase "compose: vapid gen"
# Docker makes a missing bind-mount directory owned by root; the entrypoint hands it to the image's user.
mkdir -m 755 "$project/data"
key=$(dc run --rm mollysocket vapid gen 2>"$W/vapid-gen.err") || { cat "$W/vapid-gen.err"; fail "run --rm mollysocket vapid gen"; }
[[ $key =~ ^[A-Za-z0-9_-]{43}$ ]] || fail "vapid gen printed '$key', not a key"
echo "vapid gen: a 43-character key"

phase "compose: up"
dc up -d 2>&1 | tail -1
wait_healthy
[ "$(stat -c %u:%g "$project/data")" = 1000:1000 ] || fail "./data was not handed to uid 1000"
grep -qE '^Uid:\s+1000\s' <(dc exec -T mollysocket cat /proc/1/status) || fail "the server does not run as uid 1000"
echo "the server runs as uid 1000 on the root-made ./data"

phase "compose: homepage"
page=$(curl -fsS -A 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0' "$base/")
grep -q 'mollysocket://link' <<<"$page" || fail "the homepage shows no mollysocket://link"
vapid1=$(vapid_on_homepage)
[ -n "$vapid1" ] || fail "no VAPID key in the homepage's link"
discovery=$(curl -fsS -A 'Signal-Android/7' "$base/")
[[ $discovery =~ ^\{\"mollysocket\":\{\"version\":\"[^\"]+\"\}\}$ ]] || fail "discovery answered: $discovery"
echo "homepage with its link; discovery: $discovery"

phase "compose: CLI beside the server"
node -e '
  const http = require("http"), fs = require("fs");
  http.createServer((req, res) => { fs.appendFileSync(process.argv[2], `${req.method} ${req.url}\n`); req.resume(); res.writeHead(201).end(); })
    .listen(Number(process.argv[1]), "127.0.0.1");
' "$push_port" "$W/pushes.log" &
receiver_pid=$!
uuid=0d2ff3a4-8c5e-4a5b-9c8e-2f1a3b4c5d6e
dc exec -T mollysocket mollysocket connection list
dc exec -T mollysocket mollysocket connection add "$uuid" 1 not-a-real-password "http://127.0.0.1:$push_port/push/1" ||
  fail "connection add through the running container"
grep -q '^POST /push/1$' "$W/pushes.log" || fail "connection add sent no test push"
dc exec -T mollysocket mollysocket connection list | grep -q "$uuid" || fail "connection list does not show the new connection"
echo "connection add sent its test push; connection list shows it"
for f in "$project"/data/*; do [ "$(stat -c %u "$f")" = 1000 ] || fail "$f belongs to uid $(stat -c %u "$f") after exec"; done

phase "compose: air-gapped"
dc down --timeout 5 2>&1 | tail -1
compose_files+=(-f "$project/airgapped.yml")
dc up -d 2>&1 | tail -1
wait_healthy
if ss -ltn | grep -q "127.0.0.1:$port "; then fail "air-gapped, yet something listens on $port"; fi
logs=$(dc logs --no-color 2>&1)
grep -q 'mollysocket://link?.*type=airgapped' <<<"$logs" || fail "no air-gapped link in docker compose logs"
qr_lines=$(grep -c '█' <<<"$logs" || :)
((qr_lines > 10)) || fail "no QR code in docker compose logs"
echo "no listener; the air-gapped link and a $qr_lines-line QR code in the logs"
dc down --timeout 5 2>&1 | tail -1
compose_files=("${compose_files[@]:0:4}")

phase "compose: restart on the same data"
dc up -d 2>&1 | tail -1
wait_healthy
[ "$(vapid_on_homepage)" = "$vapid1" ] || fail "the VAPID key changed after down and up"
dc exec -T mollysocket mollysocket connection list | grep -q "$uuid" || fail "the connection is gone after down and up"
echo "same VAPID key and connection after down and up"
dc down --timeout 5 2>&1 | tail -1

phase "compose: root-owned data"
# As MollySocket's image (which runs as root) leaves a volume.
chown -R 0:0 "$project/data"
dc up -d 2>&1 | tail -1
wait_healthy
[ "$(vapid_on_homepage)" = "$vapid1" ] || fail "the VAPID key changed on a root-owned volume"
bad=$(find "$project/data" ! -user 1000)
[ -z "$bad" ] || fail "still not the image user's: $bad"
echo "a root-owned ./data comes up healthy with the same key, handed to uid 1000"
dc down --timeout 5 2>&1 | tail -1

phase ""
echo "container test: ok in $(($(date +%s) - t_start)) s (${timings[*]/%/,} image $image_size)"
