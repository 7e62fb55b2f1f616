# Shared by scripts/test and scripts/demo: create .venv and install the project once.
# A stamp file keyed on pyproject.toml's hash makes re-runs fast and upgrades automatic.
ensure_venv() {
    local extras="${1:-}"
    local py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
    fi
    local stamp=".venv/.iot-flows-installed-${extras:-base}-$(sha1sum pyproject.toml | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        local spec="."
        [ -n "$extras" ] && spec=".[$extras]"
        .venv/bin/python -m pip install --quiet -e "$spec"
        touch "$stamp"
    fi
}
