#!/usr/bin/env bash
# Check the runtime stage of Dockerfile without Docker, the way SageMaker runs the image: build the
# Debian root filesystem that stage starts FROM (debootstrap, minbase) with the packages it
# apt-get installs, put BINARY at /usr/local/bin/sagemaker-hf-server and MODEL_DIR at
# /opt/ml/model in it, run `sagemaker-hf-server serve` there under chroot with the stage's ENV
# (the port moved to a free one through SAGEMAKER_BIND_TO_PORT), wait for GET /ping 200, send one
# POST /invocations and expect 200 with a JSON list, stop the server. Exit 0 when all of that
# passed, non-zero with a message saying what failed otherwise.
#
# The Python image (docker/Dockerfile.python: FROM ubuntu:24.04) is checked the same way, its Ubuntu
# release debootstrapped from archive.ubuntu.com (main and universe); docker/check-python-image.sh
# builds the binary it needs (linked against that release's libpython) and the model with a user
# script, and runs this script with CHECK_ROOTFS_EXPECT and CHECK_ROOTFS_EXPECT_LOG.
#
# The CUDA images (docker/Dockerfile.cuda, docker/Dockerfile.cuda12: FROM
# nvidia/cuda:<version>-runtime-ubuntu<22.04|24.04>, amd64) are checked the same way, with the parts of
# NVIDIA's image that cannot be fetched here stood in for (NVIDIA's apt repository is not reachable
# from these machines; Ubuntu's archive is):
# - the Ubuntu release the tag names (jammy, noble) is debootstrapped from archive.ubuntu.com, its
#   archive key from Ubuntu's own ubuntu-keyring package (pinned by sha256 below);
# - the CUDA libraries the server links (cudart, cuBLAS, cuBLASLt, cuRAND, NVRTC; all in NVIDIA's
#   runtime image) are copied from CHECK_ROOTFS_CUDA_LIBS (a folder with their versioned sonames:
#   docker/cuda-toolchain.sh prints it as CUDA_RUNTIME_LIBS, from NVIDIA's PyPI wheels of the same CUDA
#   version) to where NVIDIA's packages put them (/usr/local/cuda-X.Y/targets/x86_64-linux/lib, with
#   their ld.so.conf.d entry and the /usr/local/cuda symlink), and the image's ENV is set;
# - the driver's libcuda.so.1, which the NVIDIA container toolkit mounts from the host at run time, is
#   a stand-in that answers CUDA_ERROR_NO_DEVICE to every driver call the binary imports: this machine
#   has no GPU. The check then expects every library the binary needs to resolve in the image, and
#   the server to start, fall back to the CPU (SERVER_DEVICE=auto) and answer; the GPU path itself
#   is what benches/gpu_run.sh verifies on a GPU machine.
#
#   docker/check-rootfs.sh ARCH BINARY MODEL_DIR
#     ARCH       amd64 or arm64 (x86_64 / aarch64 accepted). A foreign ARCH runs under
#                qemu-user (qemu-<arch>-static copied into the root filesystem; no binfmt needed).
#     BINARY     the server built for ARCH (any profile; a debug build is fine).
#     MODEL_DIR  a model directory as SageMaker untars it (config.json, weights, tokenizer.json...).
#
# Needs root (debootstrap, chroot), curl, and: apt-get install -y debootstrap qemu-user-static
# For a foreign ARCH, debootstrap's second stage needs a binfmt_misc entry for qemu-<arch> in the
# kernel; without one (e.g. in a container) the packages are unpacked without their maintainer
# scripts (the CA bundle built by hand) and the script says so. The server itself needs no binfmt:
# it runs as `chroot ROOT /usr/bin/qemu-<arch>-static /usr/local/bin/sagemaker-hf-server serve`.
# Environment (all optional):
#   CHECK_ROOTFS_CACHE       folder for the cached root filesystem tarballs (default /tmp); a rerun
#                            with the same suite/arch/packages skips debootstrap.
#   CHECK_ROOTFS_MIRROR      Debian mirror (default http://deb.debian.org/debian)
#   CHECK_ROOTFS_UBUNTU_MIRROR  Ubuntu mirror for the Ubuntu and CUDA images (default http://archive.ubuntu.com/ubuntu)
#   CHECK_ROOTFS_CUDA_LIBS   for a CUDA image: the folder with the CUDA libraries (above); required
#   CHECK_ROOTFS_DOCKERFILE  the Dockerfile to read (default: Dockerfile next to docker/)
#   CHECK_ROOTFS_PORT        port to serve on, loopback (default: a free one)
#   CHECK_ROOTFS_TIMEOUT     seconds to wait for /ping 200 (default 120 native, 300 emulated)
#   CHECK_ROOTFS_BUILD_TIMEOUT  seconds allowed for debootstrap (default 2400)
#   CHECK_ROOTFS_PROC        1: mount /proc in the chroot (as Docker provides it); 0: don't;
#                            default auto: only when the server does not come up without it.
#   CHECK_ROOTFS_KEEP        1: keep the unpacked root filesystem and log (path printed)
#   CHECK_ROOTFS_EXPECT      text the /invocations body must contain (default: the body must be a
#                            JSON list)
#   CHECK_ROOTFS_EXPECT_LOG  an extended regular expression some line of the server's log must match
set -euo pipefail

die() { echo "check-rootfs: FAIL: $*" >&2; exit 1; }
log() { echo "check-rootfs: $*" >&2; }

[ $# -eq 3 ] || die "usage: $0 ARCH BINARY MODEL_DIR"
arch=$1; binary=$2; model=$3
case "$arch" in
  amd64|x86_64) arch=amd64; qemu_arch=x86_64; elf_machine=62 ;;
  arm64|aarch64) arch=arm64; qemu_arch=aarch64; elf_machine=183 ;;
  *) die "ARCH '$arch': only amd64 and arm64" ;;
esac
[ -f "$binary" ] || die "BINARY '$binary' is not a file"
[ -d "$model" ] || die "MODEL_DIR '$model' is not a directory"
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"
for tool in debootstrap chroot curl tar timeout od; do
  command -v "$tool" >/dev/null || die "'$tool' missing (apt-get install -y debootstrap qemu-user-static curl)"
done
# ELF e_machine (offset 18, little endian): 62 x86-64, 183 aarch64.
machine=$(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ')
[ "$machine" = "$elf_machine" ] || die "BINARY '$binary' is ELF machine $machine, not $arch ($elf_machine)"

here=$(cd "$(dirname "$0")" && pwd)
dockerfile=${CHECK_ROOTFS_DOCKERFILE:-$here/../Dockerfile}
[ -f "$dockerfile" ] || die "Dockerfile '$dockerfile' not found"
cache=${CHECK_ROOTFS_CACHE:-/tmp}
mirror=${CHECK_ROOTFS_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"

# --- The runtime stage: the lines from the last FROM on, continuation lines joined. -------------
stage=$(awk '/^[[:space:]]*FROM[[:space:]]/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' \
          "$dockerfile" | sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' | grep -v '^[[:space:]]*#' || true)
from=$(printf '%s\n' "$stage" | awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }')
# debian:<suite>[-<date>][-slim] (the date tags are Debian's snapshots of the suite; the
# current suite from the mirror stands in for it)
# ubuntu:<NN.04> (docker/Dockerfile.python): that Ubuntu release, main and universe.
# nvidia/cuda:<X.Y.Z>-runtime-ubuntu<NN.04>: that Ubuntu release plus the CUDA parts (see the top).
cuda_version=
distro=debian
ubuntu_suite() {
  case "$1" in
    22.04) echo jammy ;;
    24.04) echo noble ;;
    *) die "runtime stage FROM '$from': Ubuntu $1 is not known here (22.04, 24.04)" ;;
  esac
}
case "$from" in
  debian:*|docker.io/library/debian:*) suite=${from#*debian:}; suite=${suite%-slim}; suite=${suite%%-*} ;;
  ubuntu:*|docker.io/library/ubuntu:*)
    distro=ubuntu; suite=$(ubuntu_suite "${from#*ubuntu:}")
    [ "$arch" = amd64 ] || die "runtime stage FROM '$from': the Ubuntu images are checked for amd64 only"
    ;;
  nvidia/cuda:*-runtime-ubuntu*|docker.io/nvidia/cuda:*-runtime-ubuntu*)
    distro=ubuntu
    tag=${from#*nvidia/cuda:}; cuda_version=${tag%%-*}; cuda_version=${cuda_version%.*}
    suite=$(ubuntu_suite "${tag##*-ubuntu}")
    [ "$arch" = amd64 ] || die "runtime stage FROM '$from': the CUDA images are checked for amd64 only"
    cuda_libs=${CHECK_ROOTFS_CUDA_LIBS:-}
    [ -n "$cuda_libs" ] && [ -d "$cuda_libs" ] ||
      die "runtime stage FROM '$from' needs CHECK_ROOTFS_CUDA_LIBS, a folder with CUDA $cuda_version's libraries (docker/cuda-toolchain.sh prints it as CUDA_RUNTIME_LIBS)"
    ;;
  *) die "runtime stage FROM '$from': only debian:<suite>[-<date>][-slim], ubuntu:<NN.04> and nvidia/cuda:<version>-runtime-ubuntu<NN.04> images are supported" ;;
esac
[ "$distro" = ubuntu ] && mirror=${CHECK_ROOTFS_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}
# Packages: the non-option words after `apt-get install` in the stage's RUN lines.
packages=$(printf '%s\n' "$stage" | grep -E '^[[:space:]]*RUN[[:space:]]' | sed 's/&&/\n/g; s/;/\n/g; s/||/\n/g' |
             awk '{ for (i = 1; i <= NF; i++) if (($i == "apt-get" || $i == "apt") && $(i+1) == "install") {
                      for (j = i + 2; j <= NF; j++) if ($j !~ /^-/) print $j; } }' | sort -u | tr '\n' ' ')
packages=${packages% }
env_lines=$(printf '%s\n' "$stage" | awk 'toupper($1) == "ENV" { for (i = 2; i <= NF; i++) print $i }')
log "runtime stage: FROM $from -> debootstrap $suite ($arch, minbase); packages: ${packages:-none}"

host_arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
case "$host_arch" in x86_64) host_arch=amd64 ;; aarch64) host_arch=arm64 ;; esac
qemu=
if [ "$arch" != "$host_arch" ]; then
  qemu=$(command -v "qemu-$qemu_arch-static" || true)
  [ -n "$qemu" ] || die "ARCH $arch on a $host_arch host needs qemu-$qemu_arch-static (apt-get install -y qemu-user-static)"
fi

# --- Cleanup: stop the server, unmount whatever we mounted, remove the work folders. ------------
work=$(mktemp -d "$cache/check-rootfs.XXXXXX")
server_pid=
unmount_under() {  # every mount point under $1, deepest first
  local dir
  dir=$(readlink -f "$1") || return 0
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}
cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true
  fi
  unmount_under "$work"
  if [ "${CHECK_ROOTFS_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- The root filesystem, from the cache or debootstrap. -------------------------------------------
# How a foreign root filesystem gets configured (see below) is part of the cache key.
mode=native
[ -n "$qemu" ] && { grep -qs '^enabled' "/proc/sys/fs/binfmt_misc/qemu-$qemu_arch" && mode=binfmt || mode=unpacked; }
components=; [ "$distro" = ubuntu ] && components=main,universe
key=$(printf '%s|%s|%s|%s|%s' "$suite" "$arch" "$packages" "$mirror" "$components" | sha256sum | cut -c1-12)
tarball=$cache/rootfs-$distro-$suite-$arch-$mode-$key.tar.gz
debootstrap_args=()
if [ "$distro" = ubuntu ] && [ ! -s "$tarball" ]; then
  # Debian has no package with Ubuntu's archive key: take it from Ubuntu's own package, pinned.
  keyring_deb=$cache/ubuntu-keyring_2023.11.28.1_all.deb
  keyring_sha256=36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8
  if ! echo "$keyring_sha256  $keyring_deb" | sha256sum -c --quiet - >/dev/null 2>&1; then
    curl -fsS --max-time 120 -o "$keyring_deb.part" \
      "$mirror/pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb" ||
      die "could not download ubuntu-keyring from $mirror"
    echo "$keyring_sha256  $keyring_deb.part" | sha256sum -c --quiet - || die "unexpected sha256 of ubuntu-keyring"
    mv "$keyring_deb.part" "$keyring_deb"
  fi
  mkdir -p "$work/keyring"
  dpkg-deb -x "$keyring_deb" "$work/keyring" || die "could not unpack $keyring_deb"
  debootstrap_args+=(--keyring="$work/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg" --components="$components")
  # Older debootstraps (bookworm's) have no noble script; every Ubuntu release since 7.10 uses gutsy's.
  script=/usr/share/debootstrap/scripts/$suite
  [ -e "$script" ] || script=/usr/share/debootstrap/scripts/gutsy
fi
if [ -s "$tarball" ]; then
  log "using cached $tarball"
else
  build=$work/build
  include=()
  [ -n "$packages" ] && include=(--include="${packages// /,}")
  t0=$(date +%s)
  if [ -z "$qemu" ]; then
    log "debootstrap $suite $arch (minbase) from $mirror ..."
    timeout "${CHECK_ROOTFS_BUILD_TIMEOUT:-2400}" debootstrap --variant=minbase --arch="$arch" "${include[@]}" \
      "${debootstrap_args[@]}" "$suite" "$build" "$mirror" ${script:+"$script"} > "$work/debootstrap.log" 2>&1 ||
      { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  else
    log "debootstrap --foreign $suite $arch (minbase) from $mirror ..."
    timeout "${CHECK_ROOTFS_BUILD_TIMEOUT:-2400}" debootstrap --foreign --variant=minbase --arch="$arch" \
      "${include[@]}" "$suite" "$build" "$mirror" > "$work/debootstrap.log" 2>&1 ||
      { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap (first stage) failed (log above)"; }
    # The second stage runs the packages' maintainer scripts: $arch programs that exec other $arch
    # programs. `chroot ROOT qemu-$qemu_arch-static /bin/sh ...` emulates only the shell; its children
    # fail with "Exec format error" unless the kernel has a binfmt_misc entry for $qemu_arch (not
    # available in containers; `proot -q qemu-...` was tried and does not help: under bookworm's
    # proot 5.1 the emulated programs fail to see files that are there, e.g. /debootstrap/debootstrap).
    if [ "$mode" = binfmt ]; then
      cp "$qemu" "$build/usr/bin/qemu-$qemu_arch-static"
      timeout "${CHECK_ROOTFS_BUILD_TIMEOUT:-2400}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        chroot "$build" "/usr/bin/qemu-$qemu_arch-static" /bin/sh /debootstrap/debootstrap --second-stage \
        >> "$work/debootstrap.log" 2>&1 ||
        { tail -n 30 "$work/debootstrap.log" >&2; unmount_under "$build"; die "debootstrap second stage failed (log above)"; }
    else
      # No binfmt_misc: unpack the rest (the first stage unpacked the required packages; the base
      # ones, --include among them, are left), without maintainer scripts, and do by hand the one
      # thing of theirs the server relies on: ca-certificates' bundle (update-ca-certificates
      # enables every certificate the package ships).
      log "no binfmt_misc entry for qemu-$qemu_arch: unpacking the base packages without running their maintainer scripts"
      for p in $(cat "$build/debootstrap/base"); do
        deb=$(awk -v p="$p" '$1 == p { print $2; exit }' "$build/debootstrap/debpaths")
        [ -n "$deb" ] && [ -f "$build/$deb" ] || die "debootstrap did not download '$p'"
        dpkg-deb --fsys-tarfile "$build/$deb" | tar -C "$build" --keep-directory-symlink -xf - ||
          die "could not unpack $deb"
        echo "$p" >> "$build/var/lib/check-rootfs-unpacked"
      done
      if [ -d "$build/usr/share/ca-certificates" ]; then
        (cd "$build/usr/share/ca-certificates" && find . -name '*.crt' | sed 's|^\./||' | LC_ALL=C sort) \
          > "$build/etc/ca-certificates.conf"
        mkdir -p "$build/etc/ssl/certs"
        while read -r c; do cat "$build/usr/share/ca-certificates/$c"; done < "$build/etc/ca-certificates.conf" \
          > "$build/etc/ssl/certs/ca-certificates.crt"
      fi
      rm -rf "$build/debootstrap"
    fi
    rm -f "$build/usr/bin/qemu-$qemu_arch-static"
  fi
  unmount_under "$build"
  # debootstrap in a container may leave /proc a symlink to /proc; the image has a directory.
  for d in proc sys; do [ -L "$build/$d" ] && rm "$build/$d" && mkdir -m 0555 "$build/$d"; done
  # What the Dockerfile's RUN does after installing.
  rm -rf "$build"/var/lib/apt/lists/* "$build"/var/cache/apt/archives/*.deb
  tar -C "$build" --numeric-owner -czf "$tarball.part" . || die "could not write $tarball"
  mv "$tarball.part" "$tarball"
  rm -rf "$build"
  log "root filesystem built in $(( $(date +%s) - t0 )) s, cached as $tarball"
fi

# --- Unpack, add the binary and the model as the image would have them. ---------------------------
root=$work/rootfs
mkdir -p "$root"
tar -C "$root" --numeric-owner -xzf "$tarball" || die "could not unpack $tarball"
for p in $packages; do
  [ -f "$root/var/lib/dpkg/info/$p.list" ] || [ -f "$root/var/lib/dpkg/info/$p:$arch.list" ] ||
    grep -qx "$p" "$root/var/lib/check-rootfs-unpacked" 2>/dev/null ||
    die "package '$p' is not installed in the root filesystem"
done
# (COPY creates the folder if missing: base-files' postinst makes /usr/local/bin, and it does not
# run where the packages were only unpacked.)
mkdir -p "$root/usr/local/bin" "$root/opt/ml"
install -m 0755 "$binary" "$root/usr/local/bin/sagemaker-hf-server" || die "could not copy BINARY into the root filesystem"
cp -a "$(cd "$model" && pwd)" "$root/opt/ml/model" || die "could not copy MODEL_DIR into the root filesystem"
if [ -n "$cuda_version" ]; then
  # NVIDIA's CUDA libraries where its cuda-libraries-X-Y packages install them, found through
  # ld.so.conf.d as in the image (its cuda-toolkit-config packages write these entries).
  cuda_lib_dir=/usr/local/cuda-$cuda_version/targets/x86_64-linux/lib
  mkdir -p "$root$cuda_lib_dir"
  for lib in libcudart.so libcublas.so libcublasLt.so libcurand.so libnvrtc.so; do
    found=$(find -L "$cuda_libs" -maxdepth 1 -name "$lib.*" | head -1)
    [ -n "$found" ] || die "CHECK_ROOTFS_CUDA_LIBS '$cuda_libs' has no $lib.*"
  done
  cp -L "$cuda_libs"/lib*.so.* "$root$cuda_lib_dir/" || die "could not copy the CUDA libraries"
  ln -sfn "cuda-$cuda_version" "$root/usr/local/cuda"
  ln -sfn "cuda-$cuda_version" "$root/usr/local/cuda-${cuda_version%%.*}"
  echo /usr/local/cuda/targets/x86_64-linux/lib > "$root/etc/ld.so.conf.d/000_cuda.conf"
  echo "/usr/local/cuda-${cuda_version%%.*}/targets/x86_64-linux/lib" > "$root/etc/ld.so.conf.d/988_cuda-${cuda_version%%.*}.conf"
  printf '/usr/local/nvidia/lib\n/usr/local/nvidia/lib64\n' > "$root/etc/ld.so.conf.d/nvidia.conf"
  # The driver stand-in: every driver API function the binary imports (cu<Upper>...) answers
  # CUDA_ERROR_NO_DEVICE (100), as the real libcuda.so.1 does on a host without a GPU; it goes where
  # the NVIDIA container toolkit mounts the host's library.
  command -v cc >/dev/null && command -v nm >/dev/null || die "a CUDA image's check needs cc and nm (build-essential)"
  driver_calls=$(nm -D --undefined-only "$binary" | awk '{ print $NF }' | sed 's/@.*//' | grep -E '^cu[A-Z]' | sort -u || true)
  printf '%s\n' "$driver_calls" | grep -qx cuInit || die "BINARY imports no cuInit: not built with --features cuda?"
  printf '%s\n' "$driver_calls" |
    awk 'BEGIN { print "/* libcuda.so.1 stand-in: a host without a GPU */" } { print "int " $1 "(void) { return 100; }" }' \
    > "$work/libcuda_nodevice.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/usr/lib/x86_64-linux-gnu/libcuda.so.1" "$work/libcuda_nodevice.c" ||
    die "could not build the libcuda.so.1 stand-in"
  chroot "$root" /sbin/ldconfig || die "ldconfig failed in the root filesystem"
  log "CUDA $cuda_version libraries from $cuda_libs, libcuda.so.1 stand-in (no device)"
  # The ENV of NVIDIA's base image.
  env_lines="PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64
NVIDIA_VISIBLE_DEVICES=all
NVIDIA_DRIVER_CAPABILITIES=compute,utility
CUDA_VERSION=$cuda_version
$env_lines"
fi
# Every library the binary needs resolves in the image (the CUDA ones, libpython for the Python
# image, glibc's symbol versions for all); a foreign binary's are left to the server's start.
if [ -z "$qemu" ]; then
  missing=$(env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
              chroot "$root" /usr/bin/ldd /usr/local/bin/sagemaker-hf-server 2>&1 | grep -E 'not found|version .* not found' || true)
  [ -z "$missing" ] || die "in $from, the binary's libraries do not resolve:"$'\n'"$missing"
  log "every library the binary needs resolves in $from"
fi
run=(/usr/local/bin/sagemaker-hf-server serve)
if [ -n "$qemu" ]; then
  cp "$qemu" "$root/usr/bin/qemu-$qemu_arch-static"
  run=("/usr/bin/qemu-$qemu_arch-static" "${run[@]}")
fi

# --- A free loopback port, the stage's ENV, then serve. -------------------------------------------
port=${CHECK_ROOTFS_PORT:-}
if [ -z "$port" ]; then
  for _ in $(seq 50); do
    candidate=$(( 20000 + RANDOM % 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
  done
  [ -n "$port" ] || die "no free port found"
fi
envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root)
while read -r kv; do [ -n "$kv" ] && envs+=("$kv"); done <<< "$env_lines"
envs+=("SAGEMAKER_BIND_TO_PORT=$port")
ready_timeout=${CHECK_ROOTFS_TIMEOUT:-$([ -n "$qemu" ] && echo 300 || echo 120)}
server_log=$work/server.log

start_server() {
  : > "$server_log"
  # WORKDIR / (chroot changes into the new root).
  env -i "${envs[@]}" chroot "$root" "${run[@]}" >> "$server_log" 2>&1 &
  server_pid=$!
}
stop_server() {  # SIGTERM as `docker stop` sends it, then SIGKILL after 30 s
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$server_pid" 2>/dev/null; then
    log "server ignored SIGTERM for 30 s; killing it"; kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null && stop_rc=0 || stop_rc=$?
  server_pid=
}
wait_ready() {  # 0: /ping 200; 1: the server exited; 2: timed out
  local deadline=$(( $(date +%s) + ready_timeout ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$server_pid" 2>/dev/null || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/ping" || true)
    [ "$code" = 200 ] && return 0
    sleep 1
  done
  return 2
}
mount_proc() { mkdir -p "$root/proc"; mount -t proc proc "$root/proc" || die "could not mount /proc in the chroot"; proc_mounted=1; }

proc_mode=${CHECK_ROOTFS_PROC:-auto}
proc_mounted=0
[ "$proc_mode" = 1 ] && mount_proc
log "serve in the chroot on 127.0.0.1:$port ($([ "$proc_mounted" = 1 ] && echo "/proc mounted" || echo "no /proc")${qemu:+, under qemu-$qemu_arch-static}) ..."
t_start=$(date +%s)
start_server
ready=0; wait_ready || ready=$?
if [ "$ready" = 1 ] && [ "$proc_mode" = auto ]; then
  log "server exited without /proc; its log:"; tail -n 20 "$server_log" >&2
  log "retrying with /proc mounted"
  wait "$server_pid" 2>/dev/null || true; server_pid=
  mount_proc
  t_start=$(date +%s)
  start_server
  ready=0; wait_ready || ready=$?
fi
case "$ready" in
  0) log "GET /ping 200 after $(( $(date +%s) - t_start )) s" ;;
  1) tail -n 40 "$server_log" >&2; die "server exited before /ping answered 200 (log above)" ;;
  *) tail -n 40 "$server_log" >&2; stop_server; die "no GET /ping 200 within $ready_timeout s (log above)" ;;
esac

body=$work/response.json
code=$(curl -s -o "$body" -w '%{http_code}' --max-time "$ready_timeout" -X POST \
         -H 'Content-Type: application/json' -d '{"inputs": "I love this!"}' \
         "http://127.0.0.1:$port/invocations" || true)
if [ "$code" != 200 ]; then
  log "response body: $(head -c 2000 "$body" 2>/dev/null)"; tail -n 40 "$server_log" >&2
  die "POST /invocations answered HTTP '$code', expected 200"
fi
if [ -n "${CHECK_ROOTFS_EXPECT:-}" ]; then
  grep -qF -- "$CHECK_ROOTFS_EXPECT" "$body" ||
    die "POST /invocations 200 but the body does not contain '$CHECK_ROOTFS_EXPECT': $(head -c 2000 "$body")"
elif command -v python3 >/dev/null; then
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); sys.exit(0 if isinstance(v, list) else 1)' "$body" ||
    die "POST /invocations 200 but the body is not a JSON list: $(head -c 2000 "$body")"
elif command -v jq >/dev/null; then
  jq -e 'type == "array"' "$body" >/dev/null || die "POST /invocations 200 but the body is not a JSON list: $(head -c 2000 "$body")"
else
  [ "$(tr -d ' \n\t\r' < "$body" | head -c1)" = "[" ] || die "POST /invocations 200 but the body is not a JSON list: $(head -c 2000 "$body")"
fi
log "POST /invocations 200: $(head -c 500 "$body")"
if [ -n "${CHECK_ROOTFS_EXPECT_LOG:-}" ]; then
  grep -qE -- "$CHECK_ROOTFS_EXPECT_LOG" "$server_log" ||
    { tail -n 40 "$server_log" >&2; die "the server's log has no line matching '$CHECK_ROOTFS_EXPECT_LOG' (log above)"; }
  log "server log: $(grep -m1 -oE -- "$CHECK_ROOTFS_EXPECT_LOG" "$server_log")"
fi
if [ -n "$cuda_version" ]; then
  grep -q 'device: cpu (no usable CUDA device' "$server_log" ||
    { tail -n 40 "$server_log" >&2; die "the server did not say it fell back to the CPU for want of a CUDA device (log above)"; }
  log "the server tried CUDA, found no device, and served on the CPU: $(grep -m1 -o 'device: cpu (no usable CUDA device[^)]*)' "$server_log")"
fi

stop_rc=0
stop_server
log "server stopped (exit status $stop_rc after SIGTERM)"
[ "$proc_mounted" = 1 ] && { umount "$root/proc" || umount -l "$root/proc"; }
log "PASS: $arch, $(basename "$binary") served $from's root filesystem on SageMaker's terms"
