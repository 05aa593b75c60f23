# Shared by scripts/*: install what the tests and the demo need.

# Debian packages the tests and demo use, and a command each provides.
WEFT_PACKAGES="iptables:iptables-nft-restore iproute2:ip curl:curl tcpdump:tcpdump"

# Installs (as root, with apt-get) the packages of "package:command"
# pairs whose command is missing. Without root or apt-get it prints
# "<what> needs <packages>" and returns $3 (0: carry on, 1: fail).
ensure_packages() {
    local pairs="$1" what="$2" otherwise="${3:-0}" missing=()
    for pair in $pairs; do
        command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "note: $what needs ${missing[*]}; install them as root (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
        return "$otherwise"
    fi
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

ensure_system_packages() {
    ensure_packages "$WEFT_PACKAGES" "the network tests"
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

# What scripts/images and the container tests use: buildah (assembles the
# images), podman (runs them), setcap (weft-init's file capabilities),
# file (checks the binaries are static), strip.
ensure_image_tools() {
    ensure_packages "buildah:buildah podman:podman libcap2-bin:setcap file:file binutils:strip" \
        "building and running the images" 1
}

# Real Helm for the chart tests: Helm's Go engine as a Python library
# (tests/cluster/helm.py), no helm binary.
ensure_helm_sdk() {
    command -v python3 >/dev/null 2>&1 || return 0
    python3 -c 'import helm_python' >/dev/null 2>&1 && return 0
    echo "installing helm-python-sdk (real Helm for the chart tests)" >&2
    python3 -m pip install --quiet helm-python-sdk >/dev/null 2>&1 \
        || echo "note: could not install helm-python-sdk; the Helm tests skip" >&2
    return 0
}

# Removes podman pods and networks left by container tests that were killed
# (named weft-test-<pid>-...; only those whose process is gone).
remove_stale_containers() {
    command -v podman >/dev/null 2>&1 || return 0
    [ "$(id -u)" -eq 0 ] || return 0
    local name pid
    for name in $(podman pod ls --format '{{.Name}}' 2>/dev/null) $(podman network ls --format '{{.Name}}' 2>/dev/null); do
        case "$name" in weft-test-*) ;; *) continue ;; esac
        pid=$(echo "$name" | cut -d- -f3)
        kill -0 "$pid" 2>/dev/null && continue
        podman pod rm -f "$name" >/dev/null 2>&1 || podman network rm -f "$name" >/dev/null 2>&1 || true
    done
    return 0
}
