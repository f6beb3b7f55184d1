#!/usr/bin/env bash
# The torch 2.6 peer as a Debian 13 (trixie) chroot: Debian's python3-torch (2.6.0),
# python3-safetensors (0.4.5) and python3-numpy, for machines where pip has no torch 2.6 wheel.
# Needs root (debootstrap, chroot, mount namespaces) and a reachable Debian mirror (taken from the
# apt sources). `deno task peers` calls it; it is not meant to be run by hand, but can be:
#
#   torch26-chroot.sh build ROOT          build the chroot at ROOT (~4 minutes, ~1.3 GB, once)
#   torch26-chroot.sh run ROOT CMD ARGS   run CMD inside (python3 ...); the current folder, /tmp
#                                         and the folders in TORCH_PEER_BIND (colon-separated) are
#                                         visible at the same paths; the environment starts empty
#
# Exit 3: the chroot cannot be built or run here (not root, no debootstrap/apt, no mirror).
set -euo pipefail
PKGS="python3-torch python3-safetensors python3-numpy"
mode=${1:-}; root=${2:-}
[ -n "$mode" ] && [ -n "$root" ] || { sed -n '2,12p' "$0"; exit 2; }
shift 2

mirror() {
  local u
  u=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | grep -v security | head -n1 | awk '{print $2}')
  [ -n "$u" ] || u=$(grep -hs '^deb ' /etc/apt/sources.list | grep -v security | head -n1 | awk '{print $2}')
  [ -n "$u" ] || u=http://deb.debian.org/debian
  echo "$u"
}

build() {
  [ "$(id -u)" = 0 ] || { echo "torch26-chroot: building the chroot needs root" >&2; exit 3; }
  if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || { echo "torch26-chroot: no debootstrap and no apt-get to install it" >&2; exit 3; }
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null || exit 3
  fi
  local tmp="$root.building.$$"
  rm -rf "$tmp"; mkdir -p "$(dirname "$root")"
  echo "torch26-chroot: building a trixie chroot at $root (once; a few minutes)" >&2
  debootstrap --variant=minbase trixie "$tmp" "$(mirror)" >"$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; exit 3; }
  mount -t proc proc "$tmp/proc"
  chroot "$tmp" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS" \
    >>"$tmp.log" 2>&1 || { umount "$tmp/proc"; tail -20 "$tmp.log" >&2; exit 3; }
  umount "$tmp/proc"
  chroot "$tmp" apt-get clean
  rm -rf "$root"; mv "$tmp" "$root"; rm -f "$tmp.log"
}

run() {
  [ "$(id -u)" = 0 ] || { echo "torch26-chroot: running the chroot needs root" >&2; exit 3; }
  [ -x "$root/usr/bin/python3" ] || { echo "torch26-chroot: no chroot at $root" >&2; exit 3; }
  local binds="$PWD:/tmp${TORCH_PEER_BIND:+:$TORCH_PEER_BIND}"
  exec unshare --mount --propagation private bash -c '
    set -e; root=$1; binds=$2; shift 2
    mount -t proc proc "$root/proc"
    mkdir -p "$root/dev/shm"; mount -t tmpfs shm "$root/dev/shm"
    for d in /dev/null /dev/zero /dev/urandom /dev/random; do [ -e "$root$d" ] || touch "$root$d"; mount --bind "$d" "$root$d"; done
    IFS=: ; for b in $binds; do [ -n "$b" ] || continue; mkdir -p "$root$b"; mount --rbind "$b" "$root$b"; done; unset IFS
    cwd=$PWD
    exec chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 OMP_NUM_THREADS="$(nproc)" \
      bash -c "cd \"\$0\" && exec \"\$@\"" "$cwd" "$@"
  ' torch26-chroot "$root" "$binds" "$@"
}

case "$mode" in
  build) build ;;
  run) run "$@" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
