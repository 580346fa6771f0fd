# Shared by the scripts: the repository root, the toolchain, configuration.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Rust: use the installed toolchain, or install one with rustup.
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "[setup] installing the Rust toolchain with rustup"
        command -v curl >/dev/null 2>&1 || { sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates build-essential >/dev/null; }
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

# Configuration: defaults from .env.example, overridden by .env and by the
# environment of the caller.
load_env() {
    local file line key
    for file in .env.example .env; do
        [ -f "$file" ] || continue
        while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in ''|'#'*) continue ;; esac
            key=${line%%=*}
            # Unset means default: an empty value is not a setting.
            [ -z "${line#*=}" ] && continue
            [ -n "${!key+x}" ] && continue
            export "$line"
        done < "$file"
    done
}
