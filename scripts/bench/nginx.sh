# shellcheck shell=bash
# scripts/bench/nginx.sh: what bench.sh and profile.sh share to run nginx as a
# fixed-response upstream on loopback, and to find free ports. Sourced, never run.

# free_ports N: N loopback ports free right now, one a line.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

# nginx_common DIR: the top of an nginx config that runs unprivileged-style
# from DIR, in the foreground, with one worker and no logs per request; room
# for NGINX_WORKER_CONNECTIONS connections (default 8192), which nginx sets up
# when it starts.
nginx_common() {
  local dir=$1
  mkdir -p "$dir/tmp"
  cat <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections ${NGINX_WORKER_CONNECTIONS:-8192}; }
EOF
}

nginx_temp_paths() {
  local dir=$1
  cat <<EOF
  access_log off;
  client_body_temp_path $dir/tmp/client;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 1000000;
EOF
}

# upstream_nginx_conf DIR PORT: the config of the fixed-response upstream
# nginx on PORT: 200 with a small body on /, a 302 on /r (like a shortener
# redirect), and a /healthz that the proxy's probe passes.
upstream_nginx_conf() {
  local dir=$1 port=$2
  nginx_common "$dir"
  cat <<EOF
http {
$(nginx_temp_paths "$dir")
  server {
    listen 127.0.0.1:$port backlog=4096;
    location = / { default_type text/plain; return 200 "hello from the upstream\n"; }
    location = /r { return 302 https://example.invalid/target; }
    location = /healthz { default_type application/json; return 200 '{"status":"ok","release":"nginx"}'; }
  }
}
EOF
}
