#!/usr/bin/env python3
"""The benchmark driver behind scripts/bench (see that script's header and bench/README.md).

Stdlib only. Everything it starts listens on 127.0.0.1, on ports the kernel picks, under a
throwaway directory (keys, TLS CA and certificate, nginx config) removed at the end. Each
comparison is measured in the same run, interleaved repetition by repetition, and reported as
the median of the repetitions and as a ratio to its reference.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
PEER = os.path.join(BENCH, "peer")
WRK_LUA = os.path.join(BENCH, "wrk.lua")
NO_IFMA = ":~0x200000"  # OPENSSL_ia32cap: clear CPUID.7.EBX bit 21 (AVX512_IFMA)

TOKEN_BODY = {
    "organization": {"id": "org-GRNbCjYNpBB6NEH9", "name": "acme"},
    "project": {"id": "prj-vegSA59s1XPwMr2t", "name": "Default Project"},
    "workspace": {"id": "ws-mbsd5E3Ktt5Rg2Xm", "name": "prod"},
    "run": {"id": "run-X3n1AUXNGWbfECsJ", "phase": "apply"},
}

TARGETS = {
    "issuance_vs_openssl": 0.85,
    "token_cpu_vs_openssl_1core": 0.90,
    "jwks_vs_nginx": 1.0,
    "p99_vs_nginx": 1.0,
    "rss_growth_mib": 2.0,
    "idle_rss_mib": 20.0,
    "ready_existing_ms": 100.0,
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A process this run started; stopped by its own pid (and process group) only."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def tree_pids(self):
        """This process and its descendants (nginx workers, node cluster workers)."""
        pids, frontier = [self.pid], [self.pid]
        while frontier:
            parent = frontier.pop()
            try:
                with open(f"/proc/{parent}/task/{parent}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                kids = []
            pids += kids
            frontier += kids
        return pids

    def status(self, field):
        """Sum of a /proc/<pid>/status field (kB) over the process tree."""
        total = 0
        for pid in self.tree_pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(field + ":"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def cpu_seconds(self):
        """utime + stime of the process tree (all threads, nginx and node workers included)."""
        return sum(self.cpu_split())

    def cpu_split(self):
        """(utime, stime) of the process tree, in seconds."""
        user = system = 0
        for pid in self.tree_pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11])
                system += int(fields[12])
            except OSError:
                pass
        tick = os.sysconf("SC_CLK_TCK")
        return user / tick, system / tick

    def stop(self, timeout=35):
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


def run(argv, env=None, timeout=600, cwd=None):
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def env_with(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFE_OIDC_")}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


# ---------------------------------------------------------------------------------------------
# HTTP helpers


def http_get(port, path, tls_ctx=None, headers=None, timeout=5):
    cls = http.client.HTTPSConnection if tls_ctx else http.client.HTTPConnection
    kw = {"context": tls_ctx} if tls_ctx else {}
    c = cls("127.0.0.1", port, timeout=timeout, **kw)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def wait_ready(port, path, proc, deadline_s=30.0, tls_ctx=None):
    """Polls until `path` answers 200; returns seconds since the process was spawned."""
    end = time.perf_counter() + deadline_s
    while time.perf_counter() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            status, _, _ = http_get(port, path, tls_ctx=tls_ctx, timeout=1)
            if status == 200:
                return time.perf_counter() - proc.t0
        except (ConnectionError, OSError, http.client.HTTPException):
            pass
        time.sleep(0.0005)
    raise RuntimeError(f"{proc.name} not ready after {deadline_s}s:\n{proc.tail()}")


def wrk(url, conns, threads, duration, method="GET", body=None, auth=None):
    """One wrk run; returns the summary that bench/wrk.lua prints."""
    env = env_with(BENCH_METHOD=method, BENCH_BODY=body, BENCH_AUTH=auth)
    argv = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{duration}s", "--timeout", "10s",
            "-s", WRK_LUA, url]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate(timeout=duration + 60)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed: {err.decode()}")
    line = next((l for l in out.decode().splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.decode()}\n{err.decode()}")
    r = json.loads(line[len("BENCH_JSON "):])
    r["client_cpu_s"] = client_cpu
    return r


# ---------------------------------------------------------------------------------------------
# The setup: TLS material, tfe-oidc, nginx, the peer


def make_tls(work):
    """A throwaway CA and a 127.0.0.1 server certificate (ECDSA P-256), valid one day."""
    d = os.path.join(work, "tls")
    os.makedirs(d)
    p = lambda n: os.path.join(d, n)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "1",
         "-subj", "/CN=tfe-oidc bench CA"])
    run(["openssl", "req", *ec, "-keyout", p("server.key"), "-out", p("server.csr"),
         "-subj", "/CN=127.0.0.1"])
    with open(p("ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", p("server.csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
         "-CAcreateserial", "-out", p("server.crt"), "-days", "1", "-extfile", p("ext")])
    ctx = ssl.create_default_context(cafile=p("ca.crt"))
    return {"cert": p("server.crt"), "key": p("server.key"), "ca": p("ca.crt"), "ctx": ctx}


class Tfe:
    """tfe-oidc with a config file written for this run."""

    def __init__(self, binary, work, keys_dir, tls=None, name="tfe-oidc", extra=None):
        self.binary, self.work, self.keys_dir, self.tls, self.name = binary, work, keys_dir, tls, name
        self.discovery_port, self.api_port = free_port(), free_port()
        scheme = "https" if tls else "http"
        lines = [f'issuer = "{scheme}://127.0.0.1:{self.discovery_port}"', "",
                 "[discovery]", f'listen = "127.0.0.1:{self.discovery_port}"']
        if tls:
            lines += [f'tls_cert = "{tls["cert"]}"', f'tls_key = "{tls["key"]}"']
        lines += (extra or {}).get("discovery", [])
        lines += ["", "[api]", f'listen = "127.0.0.1:{self.api_port}"',
                  "", "[keys]", f'dir = "{keys_dir}"', ""]
        for section, extra_lines in (extra or {}).items():
            if section != "discovery":
                lines += ["", f"[{section}]", *extra_lines, ""]
        self.config = os.path.join(work, f"{name}.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines))
        self.proc = None

    def start(self, env_extra=None):
        env = env_with(**(env_extra or {}))
        self.proc = Proc(self.name, [self.binary, "serve", "--config", self.config],
                         os.path.join(self.work, f"{self.name}.log"), env=env, cwd=self.work)
        self.ready_s = wait_ready(self.api_port, "/readyz", self.proc)
        with open(os.path.join(self.keys_dir, "api-token")) as f:
            self.bearer = "Bearer " + f.read().strip()
        return self.ready_s

    def discovery_url(self, path):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.discovery_port}{path}"

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None


def start_nginx(work, docs, workers, tls):
    """nginx serving the bytes tfe-oidc served, with its Content-Type and Cache-Control.

    `docs`: {"plain"|"tls": {path: (body, headers)}}. nginx adds an ETag of its own (mtime-size,
    strong) as tfe-oidc does, plus Last-Modified, which tfe-oidc does not send."""
    www = os.path.join(work, "www")
    for transport, files in docs.items():
        for path, (body, _) in files.items():
            dest = os.path.join(www, transport, path.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(body)
    # Workers run as an unprivileged user: let them reach the document root (and nothing else).
    os.chmod(work, 0o711)
    for dirpath, dirnames, filenames in os.walk(www):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o644)
    ports = {"plain": free_port(), "tls": free_port()}
    any_files = docs["plain"]
    cache = {p: h.get("cache-control", "") for p, (_, h) in any_files.items()}
    with open(os.path.join(BENCH, "nginx.conf.in")) as f:
        conf = f.read()
    for k, v in {
        "@WORKERS@": str(workers), "@WORK@": work, "@PLAIN_PORT@": str(ports["plain"]),
        "@TLS_PORT@": str(ports["tls"]), "@TLS_CERT@": tls["cert"], "@TLS_KEY@": tls["key"],
        "@JWKS_CACHE@": cache["/.well-known/jwks"],
        "@CONF_CACHE@": cache["/.well-known/openid-configuration"],
    }.items():
        conf = conf.replace(k, v)
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    os.makedirs(os.path.join(work, "nginx-tmp"), exist_ok=True)
    proc = Proc("nginx", ["nginx", "-c", path, "-p", work, "-e", os.path.join(work, "nginx-error.log")],
                os.path.join(work, "nginx.log"))
    wait_ready(ports["plain"], "/.well-known/jwks", proc)
    wait_ready(ports["tls"], "/.well-known/jwks", proc, tls_ctx=tls["ctx"])
    return proc, ports


def start_peer(work, tls, workers):
    ports = {"plain": free_port(), "tls": free_port()}
    env = env_with(NODE_ENV="production", PORT_PLAIN=str(ports["plain"]), PORT_TLS=str(ports["tls"]),
                   TLS_CERT=tls["cert"], TLS_KEY=tls["key"], WORKERS=str(workers))
    proc = Proc("oidc-provider", ["node", os.path.join(PEER, "oidc-provider.mjs")],
                os.path.join(work, "oidc-provider.log"), env=env, cwd=PEER)
    wait_ready(ports["plain"], "/jwks", proc)
    wait_ready(ports["tls"], "/jwks", proc, tls_ctx=tls["ctx"])
    return proc, ports


# ---------------------------------------------------------------------------------------------
# Measurements


def openssl_speed(cores, seconds, mask=False):
    """`openssl speed -multi <cores> rsa2048` (signs/s over all cores, wall clock), and a
    single-process run (`openssl speed` counts user CPU time there: signs per CPU-second)."""
    env = env_with(OPENSSL_ia32cap=NO_IFMA if mask else None)

    def signs(extra):
        out = run(["openssl", "speed", "-mr", *extra, "-seconds", str(seconds), "rsa2048"], env=env)
        # +F2:<index>:<bits>:<signs/s>:<verifies/s>; with -multi the last one is the sum.
        rows = [l for l in out.splitlines() if l.startswith("+F2:")]
        if not rows:
            raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
        return float(rows[-1].split(":")[3])

    if cores is None:
        return {"sign_per_cpu_s": signs([])}
    return {"sign_per_s": signs(["-multi", str(cores)]), "sign_per_cpu_s": signs([])}


def sign_bench(binary, cores, seconds, mask=False):
    env = env_with(OPENSSL_ia32cap=NO_IFMA if mask else None)
    out = run([binary, "--json", "--seconds", str(seconds), "--threads", str(cores)], env=env)
    return json.loads(out.strip().splitlines()[-1])


def peer_sign(kind, seconds, mask=False):
    env = env_with(OPENSSL_ia32cap=NO_IFMA if mask else None)
    if kind == "jose":
        argv = ["node", os.path.join(PEER, "jose-sign.mjs"), str(seconds)]
    else:
        argv = [sys.executable, os.path.join(PEER, "pyjwt_sign.py"), str(seconds)]
    return json.loads(run(argv, env=env, cwd=PEER).strip().splitlines()[-1])


def measured(proc, url, conns, threads, duration, **kw):
    """A wrk run plus the server's CPU time over it (noise from other processes does not inflate
    it the way it deflates req/s)."""
    u0, s0 = proc.cpu_split()
    r = wrk(url, conns, threads, duration, **kw)
    u1, s1 = proc.cpu_split()
    cpu = (u1 - u0) + (s1 - s0)
    r["server_cpu_s"] = cpu
    r["server_user_us_per_req"] = (u1 - u0) / r["requests"] * 1e6 if r["requests"] else None
    r["server_sys_us_per_req"] = (s1 - s0) / r["requests"] * 1e6 if r["requests"] else None
    r["req_per_server_cpu_s"] = r["requests"] / cpu if cpu > 0 else None
    r["server_cpu_us_per_req"] = cpu / r["requests"] * 1e6 if r["requests"] else None
    r["client_cpu_us_per_req"] = r["client_cpu_s"] / r["requests"] * 1e6 if r["requests"] else None
    return r


def summarize_wrk(runs):
    """Median of the repetitions of one wrk configuration."""
    return {
        "rps": median([r["rps"] for r in runs]),
        "p50_ms": median([r["lat_p50_us"] / 1000 for r in runs]),
        "p99_ms": median([r["lat_p99_us"] / 1000 for r in runs]),
        "req_per_server_cpu_s": median([r.get("req_per_server_cpu_s") for r in runs]),
        "server_cpu_us_per_req": median([r.get("server_cpu_us_per_req") for r in runs]),
        "server_user_us_per_req": median([r.get("server_user_us_per_req") for r in runs]),
        "server_sys_us_per_req": median([r.get("server_sys_us_per_req") for r in runs]),
        "vs_openssl_cpu": median([r.get("vs_openssl_cpu") for r in runs]),
        "client_cpu_us_per_req": median([r.get("client_cpu_us_per_req") for r in runs]),
        "requests": sum(r["requests"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
                             for r in runs),
        "runs": runs,
    }


def ratio(a, b):
    return a / b if a is not None and b else None


# ---------------------------------------------------------------------------------------------

PHASES = ("ready", "sign", "issue", "get", "noifma", "grow")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", required=True, help="release tfe-oidc binary")
    ap.add_argument("--sign-bench", required=True, help="the benches/sign.rs executable")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "bench.json"))
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every measurement (median)")
    ap.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    ap.add_argument("--sign-seconds", type=float, default=2, help="seconds per signing figure")
    ap.add_argument("--concurrency", default="1,8,32", help="issuance connection counts")
    ap.add_argument("--get-connections", default="32,256", help="GET connection counts")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"comma-separated phases to run, of {','.join(PHASES)}")
    ap.add_argument("--no-peers", action="store_true", help="skip oidc-provider, jose and PyJWT")
    ap.add_argument("--jwks-bench", help="the benches/jwks.rs executable (phase grow)")
    ap.add_argument("--tokens", type=int, default=1_000_000,
                    help="tokens issued in the long run of phase grow (RSS must stay flat)")
    ap.add_argument("--grow-connections", default="32,256,1000,4000,10000",
                    help="keep-alive connection counts of phase grow")
    ap.add_argument("--grow-keys", default="2,5,10,20,50", help="published key counts of phase grow")
    ap.add_argument("--plots", default=BENCH, help="where phase grow writes its SVG plots")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    args.binary, args.sign_bench = os.path.abspath(args.binary), os.path.abspath(args.sign_bench)
    cores = os.cpu_count()
    dur = int(round(args.duration)) or 1
    reps = max(1, args.reps)
    sign_s = max(1, int(round(args.sign_seconds)))
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    get_conns = [int(c) for c in args.get_connections.split(",")]
    phases = set(args.only.split(","))
    if phases - set(PHASES):
        ap.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    peers = not args.no_peers
    work = tempfile.mkdtemp(prefix="tfe-oidc-bench.")
    started = time.time()
    res = {"schema": 2, "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "machine": machine_facts(cores), "settings": {
               "reps": reps, "wrk_seconds": dur, "sign_seconds": sign_s, "phases": sorted(phases),
               "issuance_concurrency": concurrencies, "get_connections": get_conns,
               "wrk_threads_get": min(2, cores), "wrk_threads_post": 1, "peers": peers},
           "loadavg_start": loadavg(), "targets": TARGETS}
    procs = []

    def started_proc(p):
        procs.append(p)
        return p

    def stop_all():
        while procs:
            procs.pop().stop()

    try:
        tls = make_tls(work)
        body = os.path.join(work, "token-body.json")
        with open(body, "w") as f:
            json.dump(TOKEN_BODY, f)
        keys = os.path.join(work, "keys")
        t = Tfe(args.binary, work, keys, name="tfe-first")  # creates the store every phase uses
        t.start()
        t.stop()

        # -- 6a. time to ready ------------------------------------------------------------------
        if "ready" in phases:
            log("time to ready: empty key store, existing key store")
            empty, existing = [], []
            for i in range(reps + 2):
                d = os.path.join(work, f"keys-empty-{i}")
                t = Tfe(args.binary, work, d, name=f"tfe-empty-{i}")
                empty.append(t.start() * 1000)
                t.stop()
                shutil.rmtree(d, ignore_errors=True)
                t = Tfe(args.binary, work, keys, name=f"tfe-existing-{i}")
                existing.append(t.start() * 1000)
                t.stop()
            res["ready"] = {"empty_store_ms": median(empty), "existing_store_ms": median(existing),
                            "empty_runs_ms": empty, "existing_runs_ms": existing}

        # -- 1 & 5. the signing limit, native and with AVX-512 IFMA masked ----------------------
        if "sign" in phases:
            res["signing"] = {}
            for mask in (False, True):
                tag = "no_ifma" if mask else "native"
                log(f"signing ({tag}): openssl speed, tfe-oidc in-process" + (", jose, PyJWT" if peers else ""))
                o, s, jo, py = [], [], [], []
                for _ in range(reps):
                    o.append(openssl_speed(cores, sign_s, mask))
                    s.append(sign_bench(args.sign_bench, cores, sign_s, mask))
                    if peers:
                        jo.append(peer_sign("jose", sign_s, mask))
                        py.append(peer_sign("pyjwt", sign_s, mask))
                m = lambda rows, k: median([r[k] for r in rows])
                fig = {
                    "openssl_multi_sign_per_s": m(o, "sign_per_s"),
                    "openssl_sign_per_core": m(o, "sign_per_s") / cores,
                    "openssl_sign_per_cpu_s": m(o, "sign_per_cpu_s"),
                    "tfe_rsa_sign_1": m(s, "rsa_sign_1"), "tfe_rsa_sign_1_cpu": m(s, "rsa_sign_1_cpu"),
                    "tfe_issue_1": m(s, "issue_1"), "tfe_issue_1_cpu": m(s, "issue_1_cpu"),
                    "tfe_issue_n": m(s, "issue_n"), "tfe_issue_n_cpu": m(s, "issue_n_cpu"),
                    "tfe_issue_per_core": m(s, "issue_n") / cores,
                    "tfe_jws_1_cpu": m(s, "jws_1_cpu"),
                    "jsonwebtoken_1_cpu": m(s, "jsonwebtoken_1_cpu"),
                    "runs": {"openssl": o, "tfe": s, "jose": jo, "pyjwt": py},
                }
                fig["tfe_issue_n_vs_openssl_multi"] = ratio(fig["tfe_issue_n"], fig["openssl_multi_sign_per_s"])
                fig["tfe_cpu_vs_openssl_cpu"] = ratio(fig["tfe_issue_1_cpu"], fig["openssl_sign_per_cpu_s"])
                fig["tfe_vs_jsonwebtoken"] = ratio(fig["tfe_jws_1_cpu"], fig["jsonwebtoken_1_cpu"])
                if jo:
                    fig["jose_per_cpu_s"] = m(jo, "per_cpu_s")
                    fig["pyjwt_per_cpu_s"] = m(py, "per_cpu_s")
                    fig["jose_impl"], fig["pyjwt_impl"] = jo[0]["impl"], py[0]["impl"]
                    fig["tfe_vs_jose"] = ratio(fig["tfe_issue_1_cpu"], fig["jose_per_cpu_s"])
                    fig["tfe_vs_pyjwt"] = ratio(fig["tfe_issue_1_cpu"], fig["pyjwt_per_cpu_s"])
                res["signing"][tag] = fig

        # -- 2. issuance over HTTP; 6b. RSS idle and under load ---------------------------------
        tfe = started_proc(Tfe(args.binary, work, keys, name="tfe-plain"))
        tfe.start()
        time.sleep(1.0)
        foot = {"rss_idle_mib": tfe.proc.status("VmRSS") / 1024}
        if "issue" in phases:
            log(f"issuance over HTTP: {len(concurrencies)} concurrencies x {reps} reps x {dur}s")
            url = f"http://127.0.0.1:{tfe.api_port}/v1/tokens"
            post = dict(method="POST", body=body, auth=tfe.bearer)
            wrk(url, 8, 1, 1, **post)  # warm-up
            runs = {c: [] for c in concurrencies}
            ossl = []
            for _ in range(reps):
                # The reference of this repetition, in the same minute: `openssl speed rsa2048` on
                # one core, signs per user CPU-second.
                ossl.append(openssl_speed(None, 2)["sign_per_cpu_s"])
                for c in concurrencies:
                    r = measured(tfe.proc, url, c, 1, dur, **post)
                    r["openssl_sign_per_cpu_s"] = ossl[-1]
                    r["vs_openssl_cpu"] = ratio(r["req_per_server_cpu_s"], ossl[-1])
                    runs[c].append(r)
            foot["rss_peak_issuance_mib"] = tfe.proc.status("VmHWM") / 1024
            res["issuance_openssl_sign_per_cpu_s"] = median(ossl)
            res["issuance_openssl_runs"] = ossl
            res["issuance"] = {}
            for c in concurrencies:
                s = summarize_wrk(runs[c])
                if "signing" in res:
                    n = res["signing"]["native"]
                    s["vs_openssl_multi"] = ratio(s["rps"], n["openssl_multi_sign_per_s"])
                    s["vs_inprocess_issue_n"] = ratio(s["rps"], n["tfe_issue_n"])
                    s["server_cpu_vs_inprocess_cpu"] = ratio(s["req_per_server_cpu_s"], n["tfe_issue_1_cpu"])
                res["issuance"][str(c)] = s

        # -- 3 & 4. discovery and JWKS GETs: tfe-oidc, nginx, oidc-provider ----------------------
        if "get" in phases:
            keys_tls = os.path.join(work, "keys-tls")  # a copy: a running server locks its store
            shutil.copytree(keys, keys_tls, ignore=shutil.ignore_patterns(".lock"))
            tfe_tls = started_proc(Tfe(args.binary, work, keys_tls, tls=tls, name="tfe-tls"))
            tfe_tls.start()
            docs = {"plain": fetch_docs(tfe), "tls": fetch_docs(tfe_tls)}
            ng, ng_ports = start_nginx(work, docs, cores, tls)
            started_proc(ng)
            peer = None
            if peers:
                peer, peer_ports = start_peer(work, tls, cores)
                started_proc(peer)
            targets = []  # (key, process, url)
            for transport, t in (("plain", tfe), ("tls", tfe_tls)):
                scheme = "https" if transport == "tls" else "http"
                for doc, path in (("jwks", "/.well-known/jwks"),
                                  ("configuration", "/.well-known/openid-configuration")):
                    targets.append((f"{doc}.{transport}.tfe-oidc", t.proc, t.discovery_url(path)))
                    targets.append((f"{doc}.{transport}.nginx", ng,
                                    f"{scheme}://127.0.0.1:{ng_ports[transport]}{path}"))
                if peer:
                    targets.append((f"jwks.{transport}.oidc-provider", peer,
                                    f"{scheme}://127.0.0.1:{peer_ports[transport]}/jwks"))
            log(f"GETs: {len(targets)} targets x {reps} reps x {dur}s at {get_conns} connections")
            threads = min(2, cores)
            for _, _, url in targets:
                wrk(url, 32, threads, 1)  # warm-up
            runs = {(k, c): [] for k, _, _ in targets for c in get_conns}
            for _ in range(reps):
                for c in get_conns:
                    for k, p, url in targets:
                        runs[(k, c)].append(measured(p, url, c, threads, dur))
            res["get"] = {str(c): {} for c in get_conns}
            for (k, c), v in runs.items():
                res["get"][str(c)][k] = summarize_wrk(v)
            for by_conns in res["get"].values():
                for k, s in by_conns.items():
                    doc, transport, server = k.split(".", 2)
                    ref = by_conns[f"{doc}.{transport}.nginx"]
                    if server != "nginx":
                        s["vs_nginx"] = ratio(s["rps"], ref["rps"])
                        s["p99_vs_nginx"] = ratio(s["p99_ms"], ref["p99_ms"])
                        s["cpu_efficiency_vs_nginx"] = ratio(s["req_per_server_cpu_s"], ref["req_per_server_cpu_s"])
            foot["nginx_rss_tree_mib"] = ng.status("VmRSS") / 1024
            foot["oidc_provider_rss_tree_mib"] = peer.status("VmRSS") / 1024 if peer else None
        if phases & {"issue", "get"}:
            foot["rss_peak_under_load_mib"] = tfe.proc.status("VmHWM") / 1024
            foot["rss_after_load_mib"] = tfe.proc.status("VmRSS") / 1024
        res["footprint"] = foot
        stop_all()

        # -- 5b. issuance over HTTP with AVX-512 IFMA masked (top concurrency) ------------------
        if "noifma" in phases:
            c = concurrencies[-1]
            log(f"issuance over HTTP with AVX-512 IFMA masked: {c} connections x {reps} reps")
            tfe = started_proc(Tfe(args.binary, work, keys, name="tfe-noifma"))
            tfe.start(env_extra={"OPENSSL_ia32cap": NO_IFMA})
            url = f"http://127.0.0.1:{tfe.api_port}/v1/tokens"
            post = dict(method="POST", body=body, auth=tfe.bearer)
            wrk(url, 8, 1, 1, **post)  # warm-up
            s = summarize_wrk([measured(tfe.proc, url, c, 1, dur, **post) for _ in range(reps)])
            stop_all()
            s["concurrency"] = c
            if "signing" in res:
                x = res["signing"]["no_ifma"]
                s["vs_openssl_multi"] = ratio(s["rps"], x["openssl_multi_sign_per_s"])
                s["server_cpu_vs_inprocess_cpu"] = ratio(s["req_per_server_cpu_s"], x["tfe_issue_1_cpu"])
            res["issuance_no_ifma"] = s

        # -- 7. cost as the work grows ----------------------------------------------------------
        if "grow" in phases:
            res["grow"] = grow(args, work, keys, body, reps, started_proc, stop_all)

        res["loadavg_end"] = loadavg()
        res["elapsed_s"] = time.time() - started
        res["verdict"] = verdict(res)
    finally:
        for p in procs:
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - best effort at teardown
                log(f"stopping {getattr(p, 'name', p)}: {e}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(table(res))
    print(f"\nJSON: {os.path.relpath(args.out, os.getcwd())}")
    bad = sum(s["non_2xx"] + s["socket_errors"] for s in all_http_runs(res))
    return 1 if bad else 0


def all_http_runs(res):
    runs = list(res.get("issuance", {}).values())
    for by_conns in res.get("get", {}).values():
        runs += list(by_conns.values())
    if "issuance_no_ifma" in res:
        runs.append(res["issuance_no_ifma"])
    return runs


def rotate(tfe):
    """POST /v1/keys/rotate?force=true: one more key in the set (the old current one retires and
    stays published until its verify_until, a tokens.max_ttl later)."""
    c = http.client.HTTPConnection("127.0.0.1", tfe.api_port, timeout=30)
    try:
        c.request("POST", "/v1/keys/rotate?force=true", headers={"Authorization": tfe.bearer})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"rotate: {r.status} {body[:200]!r}")
    finally:
        c.close()


def raise_fd_limit(want):
    """Raises this process's (and so its children's) descriptor limit; we may be root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in ((max(want, hard), max(want, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class RssSampler:
    """The peak VmRSS of a process while a measurement runs (sampled every 50 ms)."""

    def __init__(self, proc):
        import threading
        self.proc, self.peak, self.stop = proc, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.status("VmRSS"))
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def grow(args, work, keys, body, reps, started_proc, stop_all):
    """Phase grow: which resource grows with the work, and how fast. Plots go to args.plots."""
    out, dur = {}, 2
    get_threads = min(2, os.cpu_count())

    # a. Published keys 2 -> 50: JWKS bytes, render time, GET latency and CPU per request.
    counts = sorted(int(k) for k in args.grow_keys.split(","))
    log(f"grow: JWKS with {counts} published keys (forced rotations; max_ttl 24h keeps the retired)")
    store = os.path.join(work, "keys-grow")
    shutil.copytree(keys, store, ignore=shutil.ignore_patterns(".lock"))
    tfe = started_proc(Tfe(args.binary, work, store, name="tfe-grow-keys"))
    tfe.start()
    rows, docs = [], []
    for n in counts:
        while True:
            status, _, jwks = http_get(tfe.discovery_port, "/.well-known/jwks")
            have = len(json.loads(jwks)["keys"])
            if have >= n:
                break
            rotate(tfe)
        path = os.path.join(work, f"jwks-{have}.json")
        with open(path, "wb") as f:
            f.write(jwks)
        docs.append(path)
        url = tfe.discovery_url("/.well-known/jwks")
        wrk(url, 32, get_threads, 1)
        s = summarize_wrk([measured(tfe.proc, url, 32, get_threads, dur) for _ in range(reps)])
        rows.append({"keys": have, "bytes": len(jwks), "rps": s["rps"], "p50_ms": s["p50_ms"],
                     "p99_ms": s["p99_ms"], "server_cpu_us_per_req": s["server_cpu_us_per_req"],
                     "non_2xx": s["non_2xx"] + s["socket_errors"]})
    stop_all()
    if args.jwks_bench:
        rendered = [json.loads(l) for l in run([args.jwks_bench, *docs]).splitlines() if l.startswith("{")]
        for row, r in zip(rows, rendered):
            row["render_us"] = r["render_us"]
    for row in rows:
        for k in ("bytes", "p99_ms", "server_cpu_us_per_req", "render_us"):
            if row.get(k) is not None and rows[0].get(k):
                row[f"{k}_vs_{rows[0]['keys']}_keys"] = row[k] / rows[0][k]
    out["keys"] = rows

    # b. Start-up with the grown store (50 keys) against the 2-key store.
    log(f"grow: start-up with {rows[-1]['keys']} keys in the store, against 2")
    big, small = [], []
    for i in range(reps + 2):
        t = Tfe(args.binary, work, store, name=f"tfe-grow-start-{i}")
        big.append(t.start() * 1000)
        t.stop()
        t = Tfe(args.binary, work, keys, name=f"tfe-small-start-{i}")
        small.append(t.start() * 1000)
        t.stop()
    out["startup"] = {"keys": rows[-1]["keys"], "ms": median(big), "two_keys_ms": median(small),
                      "ratio": ratio(median(big), median(small)), "runs_ms": big, "two_keys_runs_ms": small}

    # c. Keep-alive connections 32 -> 10,000: RSS and p99.
    conns = sorted(int(c) for c in args.grow_connections.split(","))
    fds = raise_fd_limit(2 * max(conns) + 1024)
    conns = [c for c in conns if c + 512 <= fds]
    log(f"grow: {conns} keep-alive connections on the JWKS (descriptor limit {fds})")
    extra = {"discovery": [f"max_connections = {max(conns) + 100}"]}
    tfe = started_proc(Tfe(args.binary, work, keys, name="tfe-grow-conns", extra=extra))
    tfe.start()
    time.sleep(0.5)
    idle = tfe.proc.status("VmRSS") / 1024
    rows = []
    url = tfe.discovery_url("/.well-known/jwks")
    for c in conns:
        runs, peaks = [], []
        for _ in range(reps):
            with RssSampler(tfe.proc) as rss:
                runs.append(measured(tfe.proc, url, c, get_threads, dur + 1))
            peaks.append(rss.peak / 1024)
        s = summarize_wrk(runs)
        rows.append({"connections": c, "rss_peak_mib": median(peaks), "p50_ms": s["p50_ms"],
                     "p99_ms": s["p99_ms"], "rps": s["rps"],
                     "server_cpu_us_per_req": s["server_cpu_us_per_req"],
                     "non_2xx": s["non_2xx"] + s["socket_errors"]})
    for row in rows:
        row["rss_kib_per_connection"] = (row["rss_peak_mib"] - idle) * 1024 / row["connections"]
        row["p99_vs_first"] = ratio(row["p99_ms"], rows[0]["p99_ms"])
    out["connections"] = {"rss_idle_mib": idle, "rows": rows,
                          "rss_after_mib": tfe.proc.status("VmRSS") / 1024}
    stop_all()

    # d. RSS over a long issuance run: must be flat in the count of tokens, audit lines and
    #    label sets.
    n = args.tokens
    log(f"grow: RSS over {n:,} issued tokens (audit.path set)")
    audit = os.path.join(work, "audit.jsonl")
    tfe = started_proc(Tfe(args.binary, work, keys, name="tfe-grow-tokens",
                           extra={"audit": [f'path = "{audit}"']}))
    tfe.start()
    url = f"http://127.0.0.1:{tfe.api_port}/v1/tokens"
    post = dict(method="POST", body=body, auth=tfe.bearer)
    wrk(url, 8, 1, 1, **post)  # warm-up: buffers, allocator arenas, the first label sets
    samples = [(0, tfe.proc.status("VmRSS") / 1024)]
    issued, t0 = 0, time.time()
    chunk = 10 if n >= 200_000 else 2
    while issued < n:
        r = wrk(url, 8, 1, chunk, **post)
        issued += r["ok_2xx"]
        samples.append((issued, tfe.proc.status("VmRSS") / 1024))
    base = samples[1][1] if len(samples) > 2 else samples[0][1]
    out["tokens"] = {"tokens": issued, "seconds": time.time() - t0,
                     "rss_start_mib": samples[0][1], "rss_after_first_chunk_mib": base,
                     "rss_end_mib": samples[-1][1], "rss_end_vs_first_chunk": ratio(samples[-1][1], base),
                     "audit_lines": sum(1 for _ in open(audit)), "samples": samples}
    stop_all()

    plot_growth(out, args.plots)
    return out


def tick(x):
    """An axis label: 2, 256, 10,000, 250k, 1.0M."""
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e5:
        return f"{x / 1e3:.0f}k"
    return f"{x:,.0f}" if x == int(x) else f"{x:,.3g}"


def svg_panels(path, title, panels, note=""):
    """A small SVG of line charts, two a row; each panel is
    {"title", "x", "y", "series": [(name, [(x, y)...])], "logx": bool}. Stdlib only."""
    import html
    import math
    W, H, cols = 460, 300, 2
    rows = (len(panels) + cols - 1) // cols
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * cols}" height="{H * rows + 60}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{html.escape(title)}</text>',
           f'<text x="10" y="38" fill="#555">{html.escape(note)}</text>']
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
    for i, p in enumerate(panels):
        ox, oy = (i % cols) * W, 50 + (i // cols) * H
        l, r, t, b = ox + 60, ox + W - 20, oy + 30, oy + H - 45
        pts = [pt for _, ser in p["series"] for pt in ser if pt[1] is not None]
        if not pts:
            continue
        fx = (lambda x: math.log10(x)) if p.get("logx") else (lambda x: x)
        xs, ys = [fx(x) for x, _ in pts], [y for _, y in pts]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = 0, max(ys) * 1.1 if max(ys) > 0 else 1
        X = lambda x: l + (fx(x) - x0) / (x1 - x0) * (r - l)
        Y = lambda y: b - (y - y0) / (y1 - y0) * (b - t)
        out.append(f'<text x="{ox + 10}" y="{oy + 18}" font-weight="bold">{html.escape(p["title"])}</text>')
        out.append(f'<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>'
                   f'<line x1="{l}" y1="{t}" x2="{l}" y2="{b}" stroke="black"/>')
        for k in range(5):
            yv = y0 + (y1 - y0) * k / 4
            out.append(f'<line x1="{l}" y1="{Y(yv):.1f}" x2="{r}" y2="{Y(yv):.1f}" stroke="#eee"/>'
                       f'<text x="{l - 4}" y="{Y(yv) + 4:.1f}" text-anchor="end">{yv:,.3g}</text>')
        ticks = sorted({x for x, _ in pts})
        if len(ticks) > 8:  # many samples (the token run): five evenly spaced ticks
            ticks = [ticks[0] + (ticks[-1] - ticks[0]) * k / 4 for k in range(5)]
        for xv in ticks:
            out.append(f'<text x="{X(xv):.1f}" y="{b + 14}" text-anchor="middle">{tick(xv)}</text>')
        out.append(f'<text x="{(l + r) / 2}" y="{b + 30}" text-anchor="middle">{html.escape(p["x"])}</text>')
        out.append(f'<text x="{ox + 14}" y="{(t + b) / 2}" transform="rotate(-90 {ox + 14} {(t + b) / 2})" '
                   f'text-anchor="middle">{html.escape(p["y"])}</text>')
        for j, (name, ser) in enumerate(p["series"]):
            ser = [(x, y) for x, y in ser if y is not None]
            c = colours[j % len(colours)]
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in ser)
            out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
            out += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{c}"/>' for x, y in ser]
            if len(p["series"]) > 1:
                out.append(f'<text x="{r - 4}" y="{t + 12 + 13 * j}" text-anchor="end" fill="{c}">'
                           f'{html.escape(name)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def plot_growth(g, where):
    os.makedirs(where, exist_ok=True)
    k = g["keys"]
    svg_panels(os.path.join(where, "growth-keys.svg"), "tfe-oidc: JWKS as the published keys grow",
               [{"title": "JWKS size", "x": "published keys", "y": "bytes",
                 "series": [("bytes", [(r["keys"], r["bytes"]) for r in k])]},
                {"title": "render time (once per key set)", "x": "published keys", "y": "µs",
                 "series": [("render", [(r["keys"], r.get("render_us")) for r in k])]},
                {"title": "GET latency, 32 connections", "x": "published keys", "y": "ms",
                 "series": [("p99", [(r["keys"], r["p99_ms"]) for r in k]),
                            ("p50", [(r["keys"], r["p50_ms"]) for r in k])]},
                {"title": "server CPU per GET", "x": "published keys", "y": "µs",
                 "series": [("CPU", [(r["keys"], r["server_cpu_us_per_req"]) for r in k])]}],
               note=f"start-up with {g['startup']['keys']} keys: {g['startup']['ms']:.1f} ms "
                    f"(2 keys: {g['startup']['two_keys_ms']:.1f} ms)")
    c = g["connections"]["rows"]
    svg_panels(os.path.join(where, "growth-connections.svg"),
               "tfe-oidc: keep-alive connections on the JWKS (wrk, same machine)",
               [{"title": "resident memory (peak during the run)", "x": "connections", "y": "MiB",
                 "logx": True, "series": [("RSS", [(r["connections"], r["rss_peak_mib"]) for r in c])]},
                {"title": "latency", "x": "connections", "y": "ms", "logx": True,
                 "series": [("p99", [(r["connections"], r["p99_ms"]) for r in c]),
                            ("p50", [(r["connections"], r["p50_ms"]) for r in c])]}],
               note=f"idle RSS {g['connections']['rss_idle_mib']:.1f} MiB")
    t = g["tokens"]
    svg_panels(os.path.join(where, "growth-tokens.svg"),
               f"tfe-oidc: resident memory over {t['tokens']:,} issued tokens (audit.path set)",
               [{"title": "RSS", "x": "tokens issued", "y": "MiB",
                 "series": [("RSS", t["samples"])]}],
               note=f"{t['rss_after_first_chunk_mib']:.1f} MiB after the first chunk, "
                    f"{t['rss_end_mib']:.1f} MiB at the end; {t['audit_lines']:,} audit lines")


def fetch_docs(tfe):
    ctx = tfe.tls["ctx"] if tfe.tls else None
    out = {}
    for path in ("/.well-known/jwks", "/.well-known/openid-configuration"):
        status, headers, body = http_get(tfe.discovery_port, path, tls_ctx=ctx)
        if status != 200:
            raise RuntimeError(f"{path}: {status}")
        out[path] = (body, {k.lower(): v for k, v in headers.items()})
    return out


def machine_facts(cores):
    model, flags = "", ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    version = lambda argv: subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[:1]
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return {
        "cpu": model, "cores": cores, "avx512ifma": "avx512ifma" in flags.split(),
        "kernel": platform.release(), "openssl": (version(["openssl", "version"]) or [""])[0],
        "nginx": nginx_v, "wrk": (version(["wrk", "-v"]) or [""])[0][:60],
        "node": (version(["node", "--version"]) or [""])[0], "python": platform.python_version(),
    }


def verdict(res):
    t, v = TARGETS, {}
    if "issuance" in res and "signing" in res:
        best = max(res["issuance"].values(), key=lambda s: s["rps"] or 0)
        v["issuance_vs_openssl"] = (best["vs_openssl_multi"], f">= {t['issuance_vs_openssl']}")
    if "issuance" in res:
        best = max(res["issuance"].values(), key=lambda s: s["vs_openssl_cpu"] or 0)
        v["token_cpu_vs_openssl_1core"] = (best["vs_openssl_cpu"], f">= {t['token_cpu_vs_openssl_1core']}")
    for conns, g in res.get("get", {}).items():
        for doc in ("jwks", "configuration"):
            for transport in ("plain", "tls"):
                k = f"{doc}.{transport}.tfe-oidc"
                if k not in g:
                    continue
                if doc == "jwks" and conns == "32":
                    v[f"jwks_{transport}_vs_nginx"] = (g[k]["vs_nginx"], f">= {t['jwks_vs_nginx']}")
                v[f"{doc}_{transport}_{conns}c_p99_vs_nginx"] = (
                    g[k]["p99_vs_nginx"], f"<= {t['p99_vs_nginx']}")
    if "footprint" in res:
        v["idle_rss_mib"] = (res["footprint"]["rss_idle_mib"], f"<= {t['idle_rss_mib']}")
    if "ready" in res:
        v["ready_existing_ms"] = (res["ready"]["existing_store_ms"], f"< {t['ready_existing_ms']}")
    if "grow" in res:
        t = res["grow"]["tokens"]
        v["rss_growth_over_tokens_mib"] = (t["rss_end_mib"] - t["rss_after_first_chunk_mib"],
                                           f"<= {TARGETS['rss_growth_mib']}")
    http_runs = all_http_runs(res)
    if http_runs:
        v["zero_non_2xx"] = (sum(s["non_2xx"] + s["socket_errors"] for s in http_runs), "== 0")
    out = {}
    for k, (value, rule) in v.items():
        op, bound = rule.split()
        bound = float(bound)
        ok = value is not None and {">=": value >= bound, "<": value < bound, "<=": value <= bound,
                                    "==": value == bound}[op]
        out[k] = {"value": value, "target": rule, "met": ok}
    return out


def fmt(x, nd=0):
    return "-" if x is None else f"{x:,.{nd}f}"


def table(res):
    m, st, L = res["machine"], res["settings"], []
    L.append(f"tfe-oidc benchmark: {m['cpu']}, {m['cores']} cores, AVX-512 IFMA "
             f"{'yes' if m['avx512ifma'] else 'no'}, {m['openssl'].split(' (')[0]}")
    L.append(f"medians of {st['reps']} interleaved repetitions; wrk {st['wrk_seconds']} s per run; "
             f"1-minute load average before the run {res['loadavg_start'][0]:.2f} (above ~0.5 per core, "
             f"other processes compete for the cores)")
    if "signing" in res:
        n, x = res["signing"]["native"], res["signing"]["no_ifma"]
        L += ["", f"1/5. Signing limit, RSA-2048 / RS256 {'':<28} native   no IFMA"]
        rows = [
            (f"openssl speed -multi {m['cores']} rsa2048 (signs/s)", "openssl_multi_sign_per_s", 0),
            ("  per core", "openssl_sign_per_core", 0),
            ("openssl speed rsa2048, signs per CPU-second", "openssl_sign_per_cpu_s", 0),
            ("tfe-oidc SigningKey::sign, 1 thread (/s)", "tfe_rsa_sign_1", 0),
            ("tfe-oidc TokenIssuer::issue, 1 thread (tokens/s)", "tfe_issue_1", 0),
            ("  per CPU-second", "tfe_issue_1_cpu", 0),
            (f"tfe-oidc TokenIssuer::issue, {m['cores']} threads (tokens/s)", "tfe_issue_n", 0),
            ("  per core", "tfe_issue_per_core", 0),
            ("  ÷ openssl speed -multi", "tfe_issue_n_vs_openssl_multi", 2),
            ("tfe-oidc ÷ openssl, per CPU-second", "tfe_cpu_vs_openssl_cpu", 2),
            ("tfe-oidc token::sign, fixed claims, per CPU-second", "tfe_jws_1_cpu", 0),
            ("jsonwebtoken::encode, same claims and key, per CPU-second", "jsonwebtoken_1_cpu", 0),
            ("tfe-oidc ÷ jsonwebtoken, per CPU-second", "tfe_vs_jsonwebtoken", 2),
            ("Node jose, tokens per CPU-second", "jose_per_cpu_s", 0),
            ("PyJWT, tokens per CPU-second", "pyjwt_per_cpu_s", 0),
            ("tfe-oidc ÷ jose, per CPU-second", "tfe_vs_jose", 2),
            ("tfe-oidc ÷ PyJWT, per CPU-second", "tfe_vs_pyjwt", 2),
        ]
        for label, k, nd in rows:
            L.append(f"  {label:<62} {fmt(n.get(k), nd):>8}  {fmt(x.get(k), nd):>8}")
    if "issuance" in res:
        L += ["", "2. Issuance over HTTP: POST /v1/tokens, wrk -t1 on the same machine",
              f"  {'conns':>5} {'tokens/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'÷openssl':>9} {'÷in-proc':>9} "
              f"{'tok/srv-CPU-s':>13} {'÷in-proc CPU':>12} {'÷openssl 1c':>11} {'srv µs/tok':>10} {'user':>6} {'sys':>5} {'wrk µs/tok':>10} {'non-2xx':>8}"]
        rows = [(str(c), s) for c, s in res["issuance"].items()]
        if "issuance_no_ifma" in res:
            rows.append((f"{res['issuance_no_ifma']['concurrency']}*", res["issuance_no_ifma"]))
        for c, s in rows:
            L.append(f"  {c:>5} {fmt(s['rps']):>9} {fmt(s['p50_ms'], 2):>8} {fmt(s['p99_ms'], 2):>8} "
                     f"{fmt(s.get('vs_openssl_multi'), 2):>9} {fmt(s.get('vs_inprocess_issue_n'), 2):>9} "
                     f"{fmt(s['req_per_server_cpu_s']):>13} {fmt(s.get('server_cpu_vs_inprocess_cpu'), 2):>12} "
                     f"{fmt(s.get('vs_openssl_cpu'), 2):>11} "
                     f"{fmt(s['server_cpu_us_per_req']):>10} {fmt(s.get('server_user_us_per_req')):>6} "
                     f"{fmt(s.get('server_sys_us_per_req')):>5} {fmt(s['client_cpu_us_per_req']):>10} "
                     f"{s['non_2xx'] + s['socket_errors']:>8}")
        if "issuance_no_ifma" in res:
            L.append("  * AVX-512 IFMA masked in tfe-oidc; ratios against the masked openssl and in-process figures")
        if res.get("issuance_openssl_sign_per_cpu_s"):
            L.append(f"  ÷openssl 1c: tokens per server CPU-second (user + system, /proc) ÷ `openssl speed rsa2048` "
                     f"signs per CPU-second, measured before each repetition (median "
                     f"{res['issuance_openssl_sign_per_cpu_s']:,.0f}/s = "
                     f"{1e6 / res['issuance_openssl_sign_per_cpu_s']:.0f} µs a signature); median of the per-repetition ratios")
    for conns, by_conns in res.get("get", {}).items():
        L += ["", f"3/4. GET at {conns} connections, wrk -t{st['wrk_threads_get']} on the same machine",
              f"  {'document':<14} {'transport':<9} {'server':<14} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'p99÷nginx':>9} {'÷nginx':>7} {'req/srv-CPU-s':>13} {'÷nginx':>7} {'non-2xx':>8}"]
        for k, s in by_conns.items():
            doc, transport, server = k.split(".", 2)
            L.append(f"  {doc:<14} {transport:<9} {server:<14} {fmt(s['rps']):>9} {fmt(s['p50_ms'], 2):>7} "
                     f"{fmt(s['p99_ms'], 2):>7} {fmt(s.get('p99_vs_nginx'), 2):>9} {fmt(s.get('vs_nginx'), 2):>7} "
                     f"{fmt(s['req_per_server_cpu_s']):>13} {fmt(s.get('cpu_efficiency_vs_nginx'), 2):>7} "
                     f"{s['non_2xx'] + s['socket_errors']:>8}")
    f = res.get("footprint", {})
    L += ["", "6. Footprint (tfe-oidc)"]
    L.append(f"  RSS idle {fmt(f.get('rss_idle_mib'), 1)} MiB; peak under issuance "
             f"{fmt(f.get('rss_peak_issuance_mib'), 1)} MiB; peak under all load "
             f"{fmt(f.get('rss_peak_under_load_mib'), 1)} MiB; after load {fmt(f.get('rss_after_load_mib'), 1)} MiB")
    if f.get("nginx_rss_tree_mib") is not None:
        L.append(f"  for scale: nginx master + workers {fmt(f.get('nginx_rss_tree_mib'), 1)} MiB, "
                 f"oidc-provider cluster {fmt(f.get('oidc_provider_rss_tree_mib'), 1)} MiB")
    if "ready" in res:
        r = res["ready"]
        L.append(f"  start → /readyz 200: existing key store {fmt(r['existing_store_ms'], 1)} ms, "
                 f"empty key store {fmt(r['empty_store_ms'], 1)} ms (generates current + next keys)")
    g = res.get("grow")
    if g:
        L += ["", "7. Cost as the work grows (plots: bench/growth-*.svg)",
              f"  {'keys':>5} {'JWKS bytes':>10} {'÷2 keys':>7} {'render µs':>9} {'÷2 keys':>7} "
              f"{'GET p50 ms':>10} {'p99 ms':>7} {'÷2 keys':>7} {'srv µs/req':>10} {'÷2 keys':>7}"]
        for r in g["keys"]:
            L.append(f"  {r['keys']:>5} {fmt(r['bytes']):>10} {fmt(r.get('bytes_vs_2_keys'), 2):>7} "
                     f"{fmt(r.get('render_us'), 1):>9} {fmt(r.get('render_us_vs_2_keys'), 2):>7} "
                     f"{fmt(r['p50_ms'], 2):>10} {fmt(r['p99_ms'], 2):>7} {fmt(r.get('p99_ms_vs_2_keys'), 2):>7} "
                     f"{fmt(r['server_cpu_us_per_req'], 1):>10} {fmt(r.get('server_cpu_us_per_req_vs_2_keys'), 2):>7}")
        st_ = g["startup"]
        L.append(f"  start → /readyz 200 with {st_['keys']} keys in the store: {st_['ms']:.1f} ms; with 2: "
                 f"{st_['two_keys_ms']:.1f} ms ({fmt(st_['ratio'], 2)}×)")
        c = g["connections"]
        L += [f"  {'conns':>6} {'RSS peak MiB':>12} {'KiB/conn':>8} {'p50 ms':>7} {'p99 ms':>7} {'÷first':>6} "
              f"{'req/s':>9} {'srv µs/req':>10} {'errors':>6}   (idle RSS {c['rss_idle_mib']:.1f} MiB, "
              f"after {c['rss_after_mib']:.1f} MiB)"]
        for r in c["rows"]:
            L.append(f"  {r['connections']:>6} {fmt(r['rss_peak_mib'], 1):>12} {fmt(r['rss_kib_per_connection'], 1):>8} "
                     f"{fmt(r['p50_ms'], 2):>7} {fmt(r['p99_ms'], 2):>7} {fmt(r['p99_vs_first'], 2):>6} "
                     f"{fmt(r['rps']):>9} {fmt(r['server_cpu_us_per_req'], 1):>10} {r['non_2xx']:>6}")
        t = g["tokens"]
        L.append(f"  RSS over {t['tokens']:,} tokens in {t['seconds']:.0f} s (audit.path set, {t['audit_lines']:,} lines): "
                 f"{t['rss_start_mib']:.1f} MiB before, {t['rss_after_first_chunk_mib']:.1f} after the first chunk, "
                 f"{t['rss_end_mib']:.1f} at the end ({fmt(t['rss_end_vs_first_chunk'], 3)}×)")
    L += ["", "Targets"]
    for k, v in res["verdict"].items():
        val = v["value"]
        val = f"{val:.2f}" if isinstance(val, float) else str(val)
        L.append(f"  {'met   ' if v['met'] else 'MISSED'} {k:<22} {val:>8}  (target {v['target']})")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
