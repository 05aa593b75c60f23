#!/usr/bin/env python3
"""Real Helm, for the tests: Helm's own Go engine through the
helm-python-sdk package (PyPI; Helm's SDK as a library, no binary).

    helm.py template [-n NS] [-f FILE] [--set K=V] [--set-file K=PATH] [--include-crds]
    helm.py lint [--strict] [-f FILE] [--set K=V] [--set-file K=PATH]
    helm.py install [-n NS] [-f FILE] [--set K=V] [--set-file K=PATH] [--wait SECONDS]
    helm.py uninstall [-n NS]

The chart is charts/weft, the release is named weft; install and
uninstall use KUBECONFIG. Values merge as Helm's do: the chart's
defaults, then each -f, then --set, then --set-file.
"""

import argparse
import json
import os
import sys

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "charts", "weft")


def helm():
    try:
        import helm_python
    except ImportError:
        sys.exit("helm.py: the helm-python-sdk package is missing: pip install helm-python-sdk")
    return helm_python


def merge(base, overlay):
    """Helm's coalescing: maps merge key by key, anything else replaces."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def user_values(h, args):
    values = {}
    for path in args.values or []:
        with open(path) as f:
            merge(values, h.values_from_yaml(f.read()))
    for expr in args.set or []:
        merge(values, h.parse_set_string(expr))
    for expr in args.set_file or []:
        merge(values, h.parse_set_file(expr))
    return values


def template(h, args):
    chart = h.Chart.load(CHART)
    values = user_values(h, args)
    rendered = chart.render(values, name="weft", namespace=args.namespace, is_install=True)
    docs = []
    if args.include_crds:
        for crd in sorted(chart.crds(), key=lambda c: c["name"]):
            docs.append(f"# Source: {crd['name']}\n{crd['data']}")
    for path in sorted(rendered):
        text = rendered[path]
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        docs.append(f"# Source: {path}\n{text}")
    sys.stdout.write("---\n".join(d if d.endswith("\n") else d + "\n" for d in docs))


def lint(h, args):
    report = h.lint(CHART, user_values(h, args), strict=args.strict, namespace=args.namespace)
    for m in report.get("messages", []):
        print(f"[{['UNKNOWN', 'INFO', 'WARNING', 'ERROR'][m['severity']]}] {m['path']}: {m['error']}")
    errors = report.get("errors") or []
    for e in errors:
        print(f"error: {e}")
    failed = errors or any(m["severity"] >= (2 if args.strict else 3) for m in report.get("messages", []))
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {'failed' if failed else 'no failures'}")
    sys.exit(1 if failed else 0)


def install(h, args):
    config = h.Config(namespace=args.namespace)
    release = config.install(
        CHART, "weft", user_values(h, args), namespace=args.namespace,
        create_namespace=True, wait="watcher" if args.wait else None,
        timeout=args.wait or None,
    )
    print(json.dumps({"name": release.get("name"), "namespace": release.get("namespace"),
                      "version": release.get("version"), "status": (release.get("info") or {}).get("status")}))


def uninstall(h, args):
    config = h.Config(namespace=args.namespace)
    config.uninstall("weft")
    print(json.dumps({"uninstalled": "weft", "namespace": args.namespace}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["template", "lint", "install", "uninstall"])
    p.add_argument("-n", "--namespace", default="weft")
    p.add_argument("-f", "--values", action="append")
    p.add_argument("--set", action="append")
    p.add_argument("--set-file", action="append")
    p.add_argument("--include-crds", action="store_true")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--wait", type=int, default=0, help="seconds to wait for the release's objects")
    args = p.parse_args()
    h = helm()
    try:
        {"template": template, "lint": lint, "install": install, "uninstall": uninstall}[args.command](h, args)
    except h.HelmError as e:
        sys.exit(f"helm.py {args.command}: {e}")


if __name__ == "__main__":
    main()
