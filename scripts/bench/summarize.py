"""Turns bench.sh's raw results into markdown tables on stdout.

Input (argv[1]): tab-separated lines "table<TAB>target<TAB>round<TAB>rps<TAB>
p50_us<TAB>p99_us<TAB>errors". argv[2]: a file of "table<TAB>title" lines, in
the order to print. Targets print in the order they first appear."""

import statistics
import sys
from collections import OrderedDict


def spread(values, fmt):
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(values))}..{fmt(max(values))})"


def rps(v):
    return f"{v:,.0f}"


def ms(v):
    return f"{v / 1000:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}" if b else "n/a"


def main():
    rows = OrderedDict()
    with open(sys.argv[1]) as f:
        for line in f:
            table, target, _round, r, p50, p99, errors = line.rstrip("\n").split("\t")
            t = rows.setdefault(table, OrderedDict()).setdefault(
                target, {"rps": [], "p50": [], "p99": [], "errors": 0}
            )
            t["rps"].append(float(r))
            t["p50"].append(float(p50))
            t["p99"].append(float(p99))
            t["errors"] += int(errors)
    titles = []
    with open(sys.argv[2]) as f:
        for line in f:
            table, title = line.rstrip("\n").split("\t", 1)
            titles.append((table, title))

    for table, title in titles:
        targets = rows.get(table)
        if not targets:
            continue
        print(f"### {title}\n")
        print("| target | requests/s | p50 ms | p99 ms | errors |")
        print("|---|---:|---:|---:|---:|")
        for name, t in targets.items():
            print(
                f"| {name} | {spread(t['rps'], rps)} | {spread(t['p50'], ms)} "
                f"| {spread(t['p99'], ms)} | {t['errors']} |"
            )
        print("\nMedian over rounds, (min..max) across rounds.\n")
        ours = targets.get("ours")
        if ours:
            # Ours and any other build of it (--compare) against the baselines,
            # and ours against each other build.
            baselines = ("upstream", "nginx", "haproxy")
            builds = [n for n in targets if n not in baselines]
            lines = []
            for build in builds:
                for other in ("nginx", "haproxy"):
                    if other in targets:
                        lines.append(ratio_line(build, targets[build], other, targets[other]))
            for build in builds:
                if build != "ours":
                    lines.append(ratio_line("ours", ours, build, targets[build]))
            if lines:
                print("| ratio | throughput (higher is better) | p99 (lower is better) |")
                print("|---|---:|---:|")
                print("\n".join(lines))
                print()


def ratio_line(name, a, other, b):
    return (
        f"| {name} / {other} | "
        f"{ratio(statistics.median(a['rps']), statistics.median(b['rps']))} | "
        f"{ratio(statistics.median(a['p99']), statistics.median(b['p99']))} |"
    )


if __name__ == "__main__":
    main()
