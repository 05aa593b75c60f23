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

# The peer proxies the load harness measures beside weft (CI installs them
# so the harness's peer scenarios run there too). Their packages would
# start system services; a policy-rc.d that refuses keeps them stopped.
ensure_bench_peers() {
    command -v haproxy >/dev/null 2>&1 && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] && return 0
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        guard=1
    fi
    echo "installing haproxy and nginx (benchmark peers)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream >/dev/null 2>&1; } \
        || echo "note: could not install haproxy/nginx; the harness skips their scenarios" >&2
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

# Headless Chromium, which the dashboard's test loads the page in.
ensure_browser() {
    command -v chromium >/dev/null 2>&1 && return 0
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
    echo "installing chromium (the dashboard test's browser)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } \
        || echo "note: could not install chromium; the dashboard's browser check is skipped" >&2
    return 0
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
