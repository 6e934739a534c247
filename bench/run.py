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
    "jwks_vs_nginx": 1.0,
    "jwks_p99_ms": 1.0,
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
        total = 0
        for pid in self.tree_pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / os.sysconf("SC_CLK_TCK")

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

    def __init__(self, binary, work, keys_dir, tls=None, name="tfe-oidc"):
        self.binary, self.work, self.keys_dir, self.tls, self.name = binary, work, keys_dir, tls, name
        self.discovery_port, self.api_port = free_port(), free_port()
        scheme = "https" if tls else "http"
        lines = [f'issuer = "{scheme}://127.0.0.1:{self.discovery_port}"', "",
                 "[discovery]", f'listen = "127.0.0.1:{self.discovery_port}"']
        if tls:
            lines += [f'tls_cert = "{tls["cert"]}"', f'tls_key = "{tls["key"]}"']
        lines += ["", "[api]", f'listen = "127.0.0.1:{self.api_port}"',
                  "", "[keys]", f'dir = "{keys_dir}"', ""]
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
    cpu0 = proc.cpu_seconds()
    r = wrk(url, conns, threads, duration, **kw)
    cpu = proc.cpu_seconds() - cpu0
    r["server_cpu_s"] = cpu
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

PHASES = ("ready", "sign", "issue", "get", "noifma")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", required=True, help="release tfe-oidc binary")
    ap.add_argument("--sign-bench", required=True, help="the benches/sign.rs executable")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "bench.json"))
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every measurement (median)")
    ap.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    ap.add_argument("--sign-seconds", type=float, default=2, help="seconds per signing figure")
    ap.add_argument("--concurrency", default="1,4,16,32", help="issuance connection counts")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"comma-separated phases to run, of {','.join(PHASES)}")
    ap.add_argument("--no-peers", action="store_true", help="skip oidc-provider, jose and PyJWT")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    args.binary, args.sign_bench = os.path.abspath(args.binary), os.path.abspath(args.sign_bench)
    cores = os.cpu_count()
    dur = int(round(args.duration)) or 1
    reps = max(1, args.reps)
    sign_s = max(1, int(round(args.sign_seconds)))
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    phases = set(args.only.split(","))
    if phases - set(PHASES):
        ap.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    peers = not args.no_peers
    work = tempfile.mkdtemp(prefix="tfe-oidc-bench.")
    started = time.time()
    res = {"schema": 1, "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "machine": machine_facts(cores), "settings": {
               "reps": reps, "wrk_seconds": dur, "sign_seconds": sign_s, "phases": sorted(phases),
               "issuance_concurrency": concurrencies, "get_connections": 32,
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
            for _ in range(reps):
                for c in concurrencies:
                    runs[c].append(measured(tfe.proc, url, c, 1, dur, **post))
            foot["rss_peak_issuance_mib"] = tfe.proc.status("VmHWM") / 1024
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
            log(f"GETs: {len(targets)} targets x {reps} reps x {dur}s at 32 connections")
            threads = min(2, cores)
            for _, _, url in targets:
                wrk(url, 32, threads, 1)  # warm-up
            runs = {k: [] for k, _, _ in targets}
            for _ in range(reps):
                for k, p, url in targets:
                    runs[k].append(measured(p, url, 32, threads, dur))
            res["get"] = {k: summarize_wrk(v) for k, v in runs.items()}
            for k, s in res["get"].items():
                doc, transport, server = k.split(".", 2)
                ref = res["get"][f"{doc}.{transport}.nginx"]
                if server != "nginx":
                    s["vs_nginx"] = ratio(s["rps"], ref["rps"])
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
    http_runs = list(res.get("issuance", {}).values()) + list(res.get("get", {}).values())
    if "issuance_no_ifma" in res:
        http_runs.append(res["issuance_no_ifma"])
    bad = sum(s["non_2xx"] + s["socket_errors"] for s in http_runs)
    return 1 if bad else 0


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
    g = res.get("get", {})
    for transport in ("plain", "tls"):
        k = f"jwks.{transport}.tfe-oidc"
        if k in g:
            v[f"jwks_{transport}_vs_nginx"] = (g[k]["vs_nginx"], f">= {t['jwks_vs_nginx']}")
            v[f"jwks_{transport}_p99_ms"] = (g[k]["p99_ms"], f"< {t['jwks_p99_ms']}")
    if "footprint" in res:
        v["idle_rss_mib"] = (res["footprint"]["rss_idle_mib"], f"<= {t['idle_rss_mib']}")
    if "ready" in res:
        v["ready_existing_ms"] = (res["ready"]["existing_store_ms"], f"< {t['ready_existing_ms']}")
    http_runs = list(res.get("issuance", {}).values()) + list(g.values())
    if "issuance_no_ifma" in res:
        http_runs.append(res["issuance_no_ifma"])
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
              f"{'tok/srv-CPU-s':>13} {'÷in-proc CPU':>12} {'srv µs/tok':>10} {'wrk µs/tok':>10} {'non-2xx':>8}"]
        rows = [(str(c), s) for c, s in res["issuance"].items()]
        if "issuance_no_ifma" in res:
            rows.append((f"{res['issuance_no_ifma']['concurrency']}*", res["issuance_no_ifma"]))
        for c, s in rows:
            L.append(f"  {c:>5} {fmt(s['rps']):>9} {fmt(s['p50_ms'], 2):>8} {fmt(s['p99_ms'], 2):>8} "
                     f"{fmt(s.get('vs_openssl_multi'), 2):>9} {fmt(s.get('vs_inprocess_issue_n'), 2):>9} "
                     f"{fmt(s['req_per_server_cpu_s']):>13} {fmt(s.get('server_cpu_vs_inprocess_cpu'), 2):>12} "
                     f"{fmt(s['server_cpu_us_per_req']):>10} {fmt(s['client_cpu_us_per_req']):>10} "
                     f"{s['non_2xx'] + s['socket_errors']:>8}")
        if "issuance_no_ifma" in res:
            L.append("  * AVX-512 IFMA masked in tfe-oidc; ratios against the masked openssl and in-process figures")
    if "get" in res:
        L += ["", f"3/4. GET at 32 connections, wrk -t{st['wrk_threads_get']} on the same machine",
              f"  {'document':<14} {'transport':<9} {'server':<14} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'÷nginx':>7} {'req/srv-CPU-s':>13} {'÷nginx':>7} {'non-2xx':>8}"]
        for k, s in res["get"].items():
            doc, transport, server = k.split(".", 2)
            L.append(f"  {doc:<14} {transport:<9} {server:<14} {fmt(s['rps']):>9} {fmt(s['p50_ms'], 2):>7} "
                     f"{fmt(s['p99_ms'], 2):>7} {fmt(s.get('vs_nginx'), 2):>7} "
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
    L += ["", "Targets"]
    for k, v in res["verdict"].items():
        val = v["value"]
        val = f"{val:.2f}" if isinstance(val, float) else str(val)
        L.append(f"  {'met   ' if v['met'] else 'MISSED'} {k:<22} {val:>8}  (target {v['target']})")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
