"""Turns bench.sh's raw results into markdown tables on stdout.

Input (argv[1]): tab-separated lines "table<TAB>target<TAB>round<TAB>rps<TAB>
p50_us<TAB>p99_us<TAB>errors<TAB>cpu_us<TAB>upstream_cpu_us" (cpu_us: the
target's CPU time per request; upstream_cpu_us: the upstream's behind it;
each empty when unknown). argv[2]: a file of "table<TAB>title" lines, in
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


def two(v):
    return f"{v:.2f}"


def us(v):
    return f"{v:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}" if b else "n/a"


def main():
    rows = OrderedDict()
    with open(sys.argv[1]) as f:
        for line in f:
            table, target, rnd, r, p50, p99, errors, cpu, up_cpu = line.rstrip("\n").split("\t")
            t = rows.setdefault(table, OrderedDict()).setdefault(
                target,
                {"rps": [], "p50": [], "p99": [], "cpu": [], "up_cpu": [], "by_round": {}, "errors": 0},
            )
            t["by_round"][rnd] = (float(r), float(p99))
            if cpu:
                t["cpu"].append(float(cpu))
            if up_cpu:
                t["up_cpu"].append(float(up_cpu))
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
        print(
            "| target | requests/s | p50 ms | p99 ms | CPU µs/request "
            "| upstream CPU µs/request | errors |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, t in targets.items():
            cpu = spread(t["cpu"], us) if t["cpu"] else "n/a"
            up_cpu = spread(t["up_cpu"], us) if t["up_cpu"] else "n/a"
            print(
                f"| {name} | {spread(t['rps'], rps)} | {spread(t['p50'], ms)} "
                f"| {spread(t['p99'], ms)} | {cpu} | {up_cpu} | {t['errors']} |"
            )
        print(
            "\nMedian over rounds, (min..max) across rounds. CPU: the target's own "
            "user + system time per request (nginx: master and worker); upstream "
            "CPU: the upstream's behind it, on the same CPU.\n"
        )
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
                print(
                    "| ratio | throughput (higher is better) | p99 (lower is better) "
                    "| CPU per request (lower is better) "
                    "| throughput, paired | p99, paired |"
                )
                print("|---|---:|---:|---:|---:|---:|")
                print("\n".join(lines))
                print(
                    "\nRatios of the medians; paired: the median over rounds of the "
                    "ratio within each round (min..max), which cancels what a busy "
                    "spell does to a whole round.\n"
                )


def ratio_line(name, a, other, b):
    cpu = (
        ratio(statistics.median(a["cpu"]), statistics.median(b["cpu"]))
        if a["cpu"] and b["cpu"]
        else "n/a"
    )
    rounds = sorted(set(a["by_round"]) & set(b["by_round"]))
    tput = [a["by_round"][r][0] / b["by_round"][r][0] for r in rounds if b["by_round"][r][0]]
    p99 = [a["by_round"][r][1] / b["by_round"][r][1] for r in rounds if b["by_round"][r][1]]
    return (
        f"| {name} / {other} | "
        f"{ratio(statistics.median(a['rps']), statistics.median(b['rps']))} | "
        f"{ratio(statistics.median(a['p99']), statistics.median(b['p99']))} | {cpu} | "
        f"{spread(tput, two) if tput else 'n/a'} | {spread(p99, two) if p99 else 'n/a'} |"
    )


if __name__ == "__main__":
    main()
