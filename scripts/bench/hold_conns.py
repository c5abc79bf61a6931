"""Opens COUNT keep-alive connections to HOST:PORT, sends one request on each,
reads its answer, then holds them all open until SIGTERM or --seconds pass.
Prints "held N" once all are open, so bench.sh can measure the server's
memory while they are held. (Not until stdin closes: bench.sh starts it with
stdin from /dev/null, which would close them before the measurement.)"""

import argparse
import resource
import signal
import socket
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--path", default="/")
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()

    conns = []
    failed = 0
    for _ in range(args.count):
        try:
            s = socket.create_connection((args.host, args.port), timeout=5)
            s.sendall(request)
            if not s.recv(65536):
                failed += 1
                s.close()
                continue
            conns.append(s)
        except OSError:
            failed += 1
    print(f"held {len(conns)} failed {failed}", flush=True)

    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    for s in conns:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
