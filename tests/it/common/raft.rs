//! A real three-node OpenBao cluster: `bao server` with `storage "raft"` on disk, each node on its
//! own loopback address and ports, joined with `retry_join`, initialised (Shamir, one share) and
//! unsealed by the test. Nodes can be killed, stopped, frozen and restarted from their disk; the
//! cluster is killed when the guard drops.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::bao::deploy_vault;
use super::{init_crypto, require_tool};

/// One node: its address, its data directory, and its process while it runs.
pub struct RaftNode {
    /// `http://<ip>:<port>`
    pub addr: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    child: Option<Child>,
}

/// Three Raft nodes of one cluster; see the module documentation.
pub struct RaftCluster {
    pub nodes: Vec<RaftNode>,
    /// The root token the initialisation gave.
    pub root: String,
    unseal_key: String,
    bin: PathBuf,
    home: TempDir,
    http: reqwest::Client,
}

impl Drop for RaftCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            for (i, node) in self.nodes.iter().enumerate() {
                let log = std::fs::read_to_string(node.dir.join("bao.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- last lines of OpenBao node {i} ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl RaftNode {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(child.id().to_string())
                .status();
        }
    }
}

/// A free port on `ip`, with the next one free too (the cluster port).
fn free_ports(ip: Ipv4Addr) -> u16 {
    loop {
        let first = TcpListener::bind((ip, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind((ip, port + 1)).is_ok() {
            return port;
        }
    }
}

impl RaftCluster {
    /// Starts, initialises and unseals three nodes, and waits until all three are voters and
    /// one leads. `None` when `bao` is missing and skipping is allowed.
    pub async fn start() -> Option<RaftCluster> {
        init_crypto();
        let bin = require_tool("bao")?;
        let home = tempfile::tempdir().unwrap();
        // Each node on its own loopback address: 127.<pid-derived>.<n>.1.
        let second = 100 + (std::process::id() % 100) as u8;
        let mut nodes = Vec::new();
        for n in 0..3u8 {
            let ip = Ipv4Addr::new(127, second, 10 + n + 3 * rand_u8(), 1);
            let port = free_ports(ip);
            let dir = home.path().join(format!("node{n}"));
            std::fs::create_dir_all(dir.join("raft")).unwrap();
            nodes.push((ip, port, dir));
        }
        let joins: Vec<String> = nodes
            .iter()
            .map(|(ip, port, _)| format!("http://{ip}:{port}"))
            .collect();
        for (n, (ip, port, dir)) in nodes.iter().enumerate() {
            let retry_join: String = joins
                .iter()
                .enumerate()
                .filter(|(m, _)| *m != n)
                .map(|(_, addr)| {
                    format!("  retry_join {{\n    leader_api_addr = \"{addr}\"\n  }}\n")
                })
                .collect();
            let config = format!(
                "storage \"raft\" {{\n  path = \"{raft}\"\n  node_id = \"node{n}\"\n{retry_join}}}\n\
                 listener \"tcp\" {{\n  address = \"{ip}:{port}\"\n  cluster_address = \"{ip}:{cluster}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://{ip}:{port}\"\ncluster_addr = \"https://{ip}:{cluster}\"\n\
                 disable_mlock = true\nlog_level = \"info\"\n",
                raft = dir.join("raft").display(),
                cluster = port + 1,
            );
            std::fs::write(dir.join("config.hcl"), config).unwrap();
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut cluster = RaftCluster {
            nodes: nodes
                .into_iter()
                .map(|(ip, port, dir)| RaftNode {
                    addr: format!("http://{ip}:{port}"),
                    ip,
                    dir,
                    child: None,
                })
                .collect(),
            root: String::new(),
            unseal_key: String::new(),
            bin,
            home,
            http,
        };
        for n in 0..3 {
            cluster.spawn(n);
        }
        cluster.initialise().await;
        for n in 0..3 {
            cluster.unseal(n).await;
        }
        cluster.wait_voters(3).await;
        cluster.wait_leader(Duration::from_secs(30)).await;
        Some(cluster)
    }

    fn spawn(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        assert!(node.child.is_none(), "node {n} already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("bao.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("server")
            .arg(format!("-config={}", node.dir.join("config.hcl").display()))
            .env("HOME", self.home.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    /// A call to node `n`: status and JSON body (`null` when empty or unreachable: status 0).
    pub async fn call_node(
        &self,
        n: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.nodes[n].addr))
            .header("X-Vault-Token", &self.root);
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn initialise(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = json!({ "secret_shares": 1, "secret_threshold": 1 });
        loop {
            let (status, answer) = self
                .call_node(0, reqwest::Method::PUT, "sys/init", Some(&body))
                .await;
            if status == 200 {
                self.root = answer["root_token"].as_str().unwrap().to_owned();
                self.unseal_key = answer["keys_base64"][0].as_str().unwrap().to_owned();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node 0 could not be initialised: {status} {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Unseals node `n` (a joining node joins on its first unseal), retrying until it says it is
    /// unsealed.
    async fn unseal(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let body = json!({ "key": self.unseal_key });
        loop {
            let (status, answer) = self
                .call_node(n, reqwest::Method::PUT, "sys/unseal", Some(&body))
                .await;
            if status == 200 && answer["sealed"] == false {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {n} did not unseal: {status} {answer}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The index of the active node, as any running node reports it.
    pub async fn leader(&self) -> Option<usize> {
        for n in 0..self.nodes.len() {
            if self.nodes[n].child.is_none() {
                continue;
            }
            let (status, answer) = self
                .call_node(n, reqwest::Method::GET, "sys/leader", None)
                .await;
            if status != 200 || answer["ha_enabled"] != true {
                continue;
            }
            let address = answer["leader_address"].as_str().unwrap_or_default();
            if let Some(i) = self.nodes.iter().position(|node| node.addr == address) {
                let (health, _) = self
                    .call_node(i, reqwest::Method::GET, "sys/health", None)
                    .await;
                if health == 200 {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits up to `limit` for an active node.
    pub async fn wait_leader(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(n) = self.leader().await {
                return n;
            }
            assert!(Instant::now() < deadline, "no leader within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the Raft configuration lists `count` voters.
    pub async fn wait_voters(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(leader) = self.leader().await {
                let (status, answer) = self
                    .call_node(
                        leader,
                        reqwest::Method::GET,
                        "sys/storage/raft/configuration",
                        None,
                    )
                    .await;
                let voters = answer["data"]["config"]["servers"]
                    .as_array()
                    .map(|s| s.iter().filter(|s| s["voter"] == true).count())
                    .unwrap_or(0);
                if status == 200 && voters >= count {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach {count} voters within 60s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A write with the root token through the active node, which must succeed.
    pub async fn root_write(&self, path: &str, body: Value) -> Value {
        let leader = self.wait_leader(Duration::from_secs(30)).await;
        let (status, answer) = self
            .call_node(leader, reqwest::Method::PUT, path, Some(&body))
            .await;
        assert!(
            (200..300).contains(&status),
            "PUT /v1/{path} answered {status}: {answer}"
        );
        answer
    }

    /// Transit and KV version 2 mounted, and a periodic token holding only
    /// `deploy/vault/transit-policy.hcl` written to `path`.
    pub async fn with_transit(&self, path: &std::path::Path) {
        self.root_write("sys/mounts/transit", json!({ "type": "transit" }))
            .await;
        self.root_write(
            "sys/mounts/secret",
            json!({ "type": "kv", "options": { "version": "2" } }),
        )
        .await;
        // Every version of the lifecycle record kept (the default keeps 10), so that a test can
        // read the whole history.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A new KV v2 mount answers 400 for a moment while it upgrades.
            let leader = self.wait_leader(Duration::from_secs(30)).await;
            let body = json!({ "max_versions": 1000 });
            let (status, answer) = self
                .call_node(leader, reqwest::Method::PUT, "secret/config", Some(&body))
                .await;
            if (200..300).contains(&status) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "secret/config answered {status}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let policy = std::fs::read_to_string(deploy_vault().join("transit-policy.hcl")).unwrap();
        self.root_write("sys/policy/tfe-oidc-keys", json!({ "policy": policy }))
            .await;
        let answer = self
            .root_write(
                "auth/token/create",
                json!({ "policies": ["tfe-oidc-keys"], "no_default_policy": true, "no_parent": true, "period": "1h" }),
            )
            .await;
        std::fs::write(path, answer["auth"]["client_token"].as_str().unwrap()).unwrap();
    }

    /// SIGKILL node `n`.
    pub fn kill(&mut self, n: usize) {
        self.nodes[n].kill();
    }

    /// SIGTERM node `n` and waits for it to exit.
    pub fn stop(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.signal("TERM");
        if let Some(mut child) = node.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `n` again from its disk, unseals it and waits until it answers as an unsealed
    /// member (active or standby).
    pub async fn restart(&mut self, n: usize) {
        self.spawn(n);
        self.unseal(n).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _) = self
                .call_node(n, reqwest::Method::GET, "sys/health", None)
                .await;
            // 200 active, 429 standby.
            if status == 200 || status == 429 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {n} did not rejoin: {status}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every node's address, for `keys.vault.addr`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The loopback address of node `n`.
    pub fn ip(&self, n: usize) -> Ipv4Addr {
        self.nodes[n].ip
    }
}

fn rand_u8() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos % 60) as u8
}
