#!/bin/sh
# The image's `mollysocket` command: the entrypoint, the healthcheck and `docker compose exec` all run it.
# It runs the CLI as the unprivileged user `node`. Started as root (the image's default, as MollySocket's image
# runs, whose ./data volume therefore belongs to root), it first hands /data to that user, then drops
# privileges; started as another user (`user:` in the compose file), it runs the CLI as that user directly.
# MOLLYSOCKET_USER and MOLLYSOCKET_DATA_DIR change the user and the directory (the tests use them).
set -eu

run_as=${MOLLYSOCKET_USER:-node}
data_dir=${MOLLYSOCKET_DATA_DIR:-/data}
cli="$(dirname "$(readlink -f "$0")")/dist/cli/main.js"

if [ "$(id -u)" = 0 ]; then
  uid=$(id -u "$run_as")
  gid=$(id -g "$run_as")
  if [ -d "$data_dir" ]; then
    # Only what the user does not own yet (as the official postgres image does): on a volume that is already
    # right this changes nothing. -h: a symbolic link is handed over itself, never what it points to.
    find "$data_dir" -xdev \( ! -user "$uid" -o ! -group "$gid" \) -exec chown -h "$uid:$gid" {} + ||
      echo "mollysocket: could not hand $data_dir over to $run_as (uid $uid); continuing" >&2
  fi
  HOME=$(getent passwd "$run_as" | cut -d: -f6)
  export HOME
  # setpriv (util-linux, already in every Debian image) execs the CLI with the user's uid, gid and groups and
  # no capabilities, so it stays PID 1 and receives the container's signals itself.
  exec setpriv --reuid="$uid" --regid="$gid" --init-groups --inh-caps=-all -- node "$cli" "$@"
fi

if [ -d "$data_dir" ] && [ ! -w "$data_dir" ]; then
  echo "mollysocket: $data_dir is not writable by uid $(id -u): start the container as root once (it hands the" \
    "directory over), or on the host: chown -R $(id -u) <the directory mounted on $data_dir>" >&2
fi
exec node "$cli" "$@"
