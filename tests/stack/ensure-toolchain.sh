#!/usr/bin/env bash
# Make sure rustup has the toolchain rust-toolchain.toml pins. When it does not but the
# machine's `stable` is that very version (a fresh build machine: one toolchain, nothing can be
# downloaded), link `stable` under the pinned name. Anything else is an error that says what to
# install. Idempotent.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
want="$(sed -n 's/^channel = "\(.*\)"$/\1/p' "$REPO/rust-toolchain.toml")"
[[ -n "$want" ]] || { echo "ensure-toolchain: no channel in rust-toolchain.toml" >&2; exit 1; }

if rustup toolchain list | grep -q "^$want-"; then
  exit 0
fi
have="$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')"
if [[ "$have" == "$want" ]]; then
  sysroot="$(rustup run stable rustc --print sysroot)"
  rustup toolchain link "$want" "$sysroot"
  echo "ensure-toolchain: linked stable ($have) as $want" >&2
  exit 0
fi
echo "ensure-toolchain: rust-toolchain.toml pins $want; rustup has $(rustup toolchain list | tr '\n' ' ')" \
  "and stable is ${have:-missing}: install it with \`rustup toolchain install $want\`" >&2
exit 1
