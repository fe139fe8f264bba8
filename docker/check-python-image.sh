#!/usr/bin/env bash
# Check docker/Dockerfile.python's runtime stage without Docker (docker/check-rootfs.sh does the
# root filesystem, the chroot and the requests):
# 1. the server built with the feature `python` and linked against the libpython3.12.so.1.0 of
#    that stage's Ubuntu release (its libpython3.12t64 package, pinned by sha256 below, from
#    Ubuntu's archive: this machine's python3 is another version), with the rpath the image's
#    build gives it (/usr/lib/x86_64-linux-gnu);
# 2. MODEL_DIR (a text classifier) with a user script: code/inference.py imports a package that
#    code/requirements.txt installs at start-up with the image's pip (offline, from a wheel in
#    code/wheels: tests/fixtures/python/requirements and make_wheel.py, as tests/python_handlers.rs);
# 3. check-rootfs.sh with that binary and model: the image's Python starts embedded (3.12, prefix
#    /usr), pip installs the requirement, and /invocations answers through the script's output_fn.
#
#   docker/check-python-image.sh MODEL_DIR      (from the repository root; needs root, cargo,
#                                                python3, curl, debootstrap)
# Builds into target/ (debug profile, as the tests; target/python-image keeps the binary).
# Environment: CHECK_ROOTFS_CACHE, CHECK_ROOTFS_UBUNTU_MIRROR (as check-rootfs.sh).
set -euo pipefail

die() { echo "check-python-image: FAIL: $*" >&2; exit 1; }
log() { echo "check-python-image: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 MODEL_DIR"
model=$1
[ -f "$model/config.json" ] || die "MODEL_DIR '$model' has no config.json"
cd "$(dirname "$0")/.."
dockerfile=docker/Dockerfile.python
mirror=${CHECK_ROOTFS_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}
cache=${CHECK_ROOTFS_CACHE:-/tmp}
out=$PWD/target/python-image
mkdir -p "$out" "$cache"

# The libpython the runtime stage installs: Ubuntu 24.04's release version (the release pocket
# never changes, so the archive keeps this file).
deb_name=libpython3.12t64_3.12.3-1_amd64.deb
deb_sha256=31df8af8521fb3fdf198d7507765d4ebf435c7165a50013b39d2761fd6c0d98c
runtime_stage=$(awk '/^[[:space:]]*FROM[[:space:]]/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$dockerfile")
printf '%s\n' "$runtime_stage" | grep -q '^FROM ubuntu:24.04' || die "$dockerfile's runtime stage is not FROM ubuntu:24.04 (update this script)"
printf '%s\n' "$runtime_stage" | grep -qw 'libpython3.12t64' || die "$dockerfile's runtime stage does not install libpython3.12t64 (update this script)"
deb=$cache/$deb_name
if ! echo "$deb_sha256  $deb" | sha256sum -c --quiet - >/dev/null 2>&1; then
  curl -fsS --max-time 300 -o "$deb.part" "$mirror/pool/main/p/python3.12/$deb_name" ||
    die "could not download $deb_name from $mirror"
  echo "$deb_sha256  $deb.part" | sha256sum -c --quiet - || die "unexpected sha256 of $deb_name"
  mv "$deb.part" "$deb"
fi
rm -rf "$out/libpython"; mkdir -p "$out/libpython"
dpkg-deb -x "$deb" "$out/libpython" || die "could not unpack $deb"
libdir=$out/libpython/usr/lib/x86_64-linux-gnu
[ -f "$libdir/libpython3.12.so.1.0" ] || die "$deb_name has no libpython3.12.so.1.0"
ln -sfn libpython3.12.so.1.0 "$libdir/libpython3.12.so"   # what -lpython3.12 looks for

# pyo3's interpreter for the build, as `python3.12` in the image's build stage describes it; the
# library is found in the unpacked package, and lib_dir gives the image's rpath.
cat > "$out/pyo3-config.txt" <<CONFIG
implementation=CPython
version=3.12
shared=true
lib_name=python3.12
lib_dir=/usr/lib/x86_64-linux-gnu
pointer_width=64
extra_build_script_line=cargo:rustc-link-search=native=$libdir
CONFIG
log "building the server with --features python against $deb_name"
# --allow-shlib-undefined: that libpython needs Ubuntu 24.04's glibc (2.38 symbols), which this
# machine's may predate; the image's glibc has them (check-rootfs.sh's ldd check says so).
PYO3_CONFIG_FILE=$out/pyo3-config.txt cargo rustc --features python --bin sagemaker-hf-server -- \
  -C link-arg=-Wl,--allow-shlib-undefined
cp target/debug/sagemaker-hf-server "$out/sagemaker-hf-server"

# The model with its user script and the requirement's wheel.
rm -rf "$out/model"
cp -a "$model" "$out/model"
rm -rf "$out/model/code"; mkdir -p "$out/model/code"
cp tests/fixtures/python/requirements/code/inference.py "$out/model/code/"
python3 tests/fixtures/python/make_wheel.py "$out/model/code/wheels" >/dev/null
cat > "$out/model/code/requirements.txt" <<REQUIREMENTS
--no-index
--find-links /opt/ml/model/code/wheels
hfserver-test-greeting==0.1.0
REQUIREMENTS

CHECK_ROOTFS_DOCKERFILE=$dockerfile \
CHECK_ROOTFS_EXPECT='hello from requirements.txt: ' \
CHECK_ROOTFS_EXPECT_LOG='embedded Python 3\.12\.[0-9]+ \(/usr\), pip runs as /usr/bin/python3\.12' \
  docker/check-rootfs.sh amd64 "$out/sagemaker-hf-server" "$out/model"
