# Shared by scripts/*: install what the tests and the demo need.

# Debian packages the tests and demo use, and a command each provides.
WEFT_PACKAGES="iptables:iptables-nft-restore iproute2:ip curl:curl tcpdump:tcpdump"

ensure_system_packages() {
    local missing=()
    for pair in $WEFT_PACKAGES; do
        command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "note: missing ${missing[*]}; install them (as root) to run the network tests" >&2
        return 0
    fi
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

# Deletes network namespaces left by test runs that were killed.
remove_stale_namespaces() {
    command -v ip >/dev/null 2>&1 || return 0
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case "$ns" in weft-test-*) ;; *) continue ;; esac
        pid=$(echo "$ns" | cut -d- -f3)
        if ! kill -0 "$pid" 2>/dev/null; then ip netns del "$ns" 2>/dev/null || true; fi
    done
    return 0
}
