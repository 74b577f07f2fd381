//! The `sealpost keys` and `sealpost policy` commands, run as the real binary: output, exit
//! codes (0 ok, 1 error, 2 usage) and `policy reload` against a running server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use openpgp::cert::CertBuilder;
use openpgp::serialize::SerializeInto as _;
use sequoia_openpgp as openpgp;

const BIN: &str = env!("CARGO_BIN_EXE_sealpost");

const POLICY: &str = r#"[[rule]]
name = "example-test-encrypted"
recipient_domains = ["example.test"]
require = "encrypted"
methods = ["pgp", "smime"]
on_unavailable = "bounce"

[[rule]]
name = "marked"
header = { name = "X-Sealpost-Sensitivity", value = "phi" }
require = "verified-tls"
"#;

/// A scratch directory with `sealpost.toml` (policy.toml beside it, keys in keys/, every
/// domain routed, WKD off: nothing leaves the machine).
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = format!(
            r#"[server]
hostname = "mx.example.test"
spool_dir = "{spool}"
[[listener]]
address = "127.0.0.1:{port}"
mode = "relay"
[relay]
local_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32"]
[[route]]
domain = "example.test"
host = "127.0.0.1"
port = 9
[[route]]
domain = "other.example"
host = "127.0.0.1"
port = 9
[dns]
nameservers = ["127.0.0.1:9"]
[policy]
file = "policy.toml"
wkd = false
[keys]
dir = "keys"
[[class]]
name = "marketing"
"#,
            spool = dir.path().join("spool").display()
        );
        std::fs::write(dir.path().join("sealpost.toml"), config).expect("write config");
        std::fs::write(dir.path().join("policy.toml"), POLICY).expect("write policy");
        Self { dir, port }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("sealpost.toml")
    }

    /// Runs `sealpost ARGS... --config CONFIG`.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--config").arg(self.config());
        cmd.output().expect("run sealpost")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// An armored public certificate for `Bob <bob@example.test>` and its fingerprint.
fn bob_key(dir: &Path) -> (PathBuf, String) {
    let (cert, _) = CertBuilder::general_purpose(Some("Bob <bob@example.test>"))
        .generate()
        .unwrap_or_else(|e| panic!("generate: {e}"));
    let public = cert.clone().strip_secret_key_material();
    let path = dir.join("bob.asc");
    std::fs::write(&path, public.armored().to_vec().expect("armor")).expect("write key");
    (path, cert.fingerprint().to_hex())
}

#[test]
fn keys_import_list_remove() {
    let s = Setup::new();
    let o = s.run(&["keys", "list"]);
    assert_eq!((code(&o), text(&o.stdout).trim()), (0, "no keys"));

    let (key, fpr) = bob_key(s.dir.path());
    let o = s.run(&["keys", "import", key.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        format!("imported pgp {fpr} bob@example.test\n")
    );
    assert!(
        s.path("keys/pgp").is_dir(),
        "keys dir relative to the config"
    );

    let o = s.run(&["keys", "list", "--json"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v[0]["kind"], "pgp");
    assert_eq!(v[0]["fingerprint"], fpr.as_str());
    assert_eq!(v[0]["emails"][0], "bob@example.test");
    let o = s.run(&["keys", "list"]);
    let out = text(&o.stdout);
    assert!(
        out.contains(&fpr) && out.contains("bob@example.test"),
        "{out}"
    );
    assert!(out.ends_with("-- 1 key(s)\n"), "{out}");

    // Not a key at all: exit 1 with a reason.
    std::fs::write(s.path("junk.txt"), "hello\n").unwrap();
    let o = s.run(&["keys", "import", s.path("junk.txt").to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("junk.txt"), "{}", text(&o.stderr));

    let o = s.run(&["keys", "remove", "nobody@example.test"]);
    assert_eq!(code(&o), 1);
    let o = s.run(&["keys", "remove", "bob@example.test"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = s.run(&["keys", "list"]);
    assert_eq!(text(&o.stdout).trim(), "no keys");

    // Usage errors exit 2.
    let o = Command::new(BIN)
        .args(["keys", "import"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 2);
}

#[test]
fn policy_explain_text_and_json() {
    let s = Setup::new();
    let (key, fpr) = bob_key(s.dir.path());
    assert_eq!(code(&s.run(&["keys", "import", key.to_str().unwrap()])), 0);

    let o = s.run(&[
        "policy",
        "explain",
        "bob@example.test",
        "carol@example.test",
        "x@other.example",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let blocks: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{out}");
    assert!(
        blocks[0].starts_with("recipient: bob@example.test\n"),
        "{out}"
    );
    assert!(
        blocks[0].contains("\nrule: example-test-encrypted (line 2)\n"),
        "{out}"
    );
    assert!(
        blocks[0].contains(&format!("\n  method: pgp (key {fpr})\n")),
        "{out}"
    );
    assert!(blocks[1].contains("\ndecision: refuse (bounce)\n"), "{out}");
    assert!(
        blocks[2].contains("\nrule: none matched (default: require none)\n"),
        "{out}"
    );

    // --header feeds the header matcher; --from the sender.
    let o = s.run(&[
        "policy",
        "explain",
        "--from",
        "alice@example.net",
        "--header",
        "X-Sealpost-Sensitivity: phi",
        "--json",
        "x@other.example",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["recipient"], "x@other.example");
    assert_eq!(v[0]["rule"]["name"], "marked");

    // Usage: a header without a colon, no recipient, no --config.
    let o = s.run(&[
        "policy",
        "explain",
        "--header",
        "nocolon",
        "a@other.example",
    ]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    let o = s.run(&["policy", "explain"]);
    assert_eq!(code(&o), 2);
    let o = Command::new(BIN)
        .args(["policy", "explain", "a@other.example"])
        .output()
        .expect("run");
    assert_eq!(code(&o), 2);

    // A bad policy file: exit 1 with file:line.
    std::fs::write(
        s.path("policy.toml"),
        format!("{POLICY}\n[[rule]]\nname = \"bad\"\nrequire = \"sometimes\"\n"),
    )
    .unwrap();
    let o = s.run(&["policy", "explain", "a@other.example"]);
    assert_eq!(code(&o), 1);
    let bad_line = POLICY.lines().count() + 4;
    assert!(
        text(&o.stderr).contains(&format!("policy.toml:{bad_line}:")),
        "{}",
        text(&o.stderr)
    );
}

/// Kills the server it holds when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn policy_reload_online_and_offline() {
    let s = Setup::new();
    // No server: the file is validated and the answer says nothing was reloaded.
    let o = s.run(&["policy", "reload"]);
    assert_eq!(code(&o), 1);
    let err = text(&o.stderr);
    assert!(err.contains("OK (2 rule(s))"), "{err}");
    assert!(err.contains("not running"), "{err}");

    let server = Server(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(s.config())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // The admin socket is bound after the SMTP listeners: wait for both.
    let admin = s.path("spool/admin.sock");
    while std::net::TcpStream::connect(("127.0.0.1", s.port)).is_err()
        || std::os::unix::net::UnixStream::connect(&admin).is_err()
    {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = s.run(&["policy", "reload"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "policy reloaded: 2 rule(s) in force\n");

    std::fs::write(s.path("policy.toml"), "[[rule]]\nname = 42\n").unwrap();
    let o = s.run(&["policy", "reload"]);
    assert_eq!(code(&o), 1);
    let err = text(&o.stderr);
    assert!(err.contains("policy.toml:2:"), "{err}");
    assert!(err.contains("previous policy stays"), "{err}");

    std::fs::write(s.path("policy.toml"), "").unwrap();
    let o = s.run(&["policy", "reload"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "policy reloaded: 0 rule(s) in force\n");
    drop(server);
}

#[test]
fn suppression_add_list_remove_offline() {
    let s = Setup::new();
    let o = s.run(&["suppression", "list"]);
    assert_eq!(
        (code(&o), text(&o.stdout).trim()),
        (0, "The suppression list is empty")
    );

    let o = s.run(&[
        "suppression",
        "add",
        "Bob@Example.test",
        "--class",
        "marketing",
        "--reason",
        "asked by phone",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = s.run(&["suppression", "add", "carol@example.test"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = s.run(&["suppression", "add", "not an address"]);
    assert_eq!(code(&o), 2, "a usage error");
    assert!(
        text(&o.stderr).contains("not an email address"),
        "{}",
        text(&o.stderr)
    );

    let o = s.run(&["suppression", "list", "--json"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let entries = v["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(entries[0]["address"], "bob@example.test");
    assert_eq!(entries[0]["class"], "marketing");
    assert_eq!(entries[0]["source"], "admin");
    assert_eq!(entries[0]["reason"], "asked by phone");
    assert_eq!(entries[1]["class"], "*");

    let o = s.run(&[
        "suppression",
        "remove",
        "bob@example.test",
        "--class",
        "default",
    ]);
    assert_eq!(code(&o), 1, "nothing in that class");
    let o = s.run(&["suppression", "remove", "bob@example.test"]);
    assert_eq!((code(&o), text(&o.stdout).trim()), (0, "removed 1 entry"));
    let o = s.run(&["suppression", "list"]);
    let out = text(&o.stdout);
    assert!(
        out.contains("carol@example.test") && !out.contains("bob@"),
        "{out}"
    );
}

#[test]
fn explain_and_suppression_refuse_malformed_addresses() {
    let s = Setup::new();
    // Angle brackets are a spelling of the same address, not a different recipient.
    let o = s.run(&["policy", "explain", "<carol@example.test>"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("rule: example-test-encrypted"),
        "{}",
        text(&o.stdout)
    );
    for bad in [
        "carol@example.test>",
        "not-an-address",
        "",
        "x@@example.test",
        "a b@example.test",
    ] {
        let o = s.run(&["policy", "explain", bad]);
        assert_eq!(code(&o), 2, "{bad:?}: {}", text(&o.stdout));
        assert!(
            text(&o.stderr).contains("not an email address"),
            "{bad:?}: {}",
            text(&o.stderr)
        );
    }
    let o = s.run(&[
        "policy",
        "explain",
        "--from",
        "bad from",
        "bob@example.test",
    ]);
    assert_eq!(code(&o), 2);
    for args in [
        &["suppression", "add", "x@@example.test"][..],
        &["suppression", "remove", "garbage"][..],
        &[
            "suppression",
            "add",
            "bob@example.test",
            "--class",
            "nosuchclass",
        ][..],
    ] {
        let o = s.run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o.stdout));
    }
}

#[test]
fn dkim_keygen_writes_a_private_key_and_prints_the_record() {
    let s = Setup::new();
    let key = s.path("s1.pem");
    let o = Command::new(BIN)
        .args([
            "dkim",
            "keygen",
            "example.test",
            "s1",
            "--algorithm",
            "ed25519",
            "--out",
        ])
        .arg(&key)
        .output()
        .expect("run");
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        text(&o.stdout)
            .starts_with("s1._domainkey.example.test. IN TXT ( \"v=DKIM1; k=ed25519; p="),
        "{}",
        text(&o.stdout)
    );
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let again = Command::new(BIN)
        .args(["dkim", "keygen", "example.test", "s1", "--out"])
        .arg(&key)
        .output()
        .expect("run");
    assert_eq!(code(&again), 1, "never overwrites a key");
    let bad = Command::new(BIN)
        .args(["dkim", "keygen", "exa mple.test", "s1"])
        .output()
        .expect("run");
    assert_eq!(code(&bad), 2, "a usage error");
    // check-config loads [[dkim]] keys.
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        format!(
            "{cfg}\n[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = \"s1.pem\"\n"
        ),
    )
    .unwrap();
    let o = s.run(&["check-config"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    std::fs::write(s.config(), format!("{cfg}\n[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = \"missing.pem\"\n")).unwrap();
    let o = s.run(&["check-config"]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stderr).contains("missing.pem"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn check_config_warns_about_an_open_relay() {
    let s = Setup::new();
    let o = s.run(&["check-config"]);
    assert_eq!(code(&o), 0);
    assert!(!text(&o.stderr).contains("warning"), "{}", text(&o.stderr));
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    let open = cfg.replace(
        r#"trusted_networks = ["127.0.0.1/32"]"#,
        r#"trusted_networks = ["0.0.0.0/0"]"#,
    );
    assert_ne!(open, cfg);
    std::fs::write(s.config(), open).unwrap();
    let o = s.run(&["check-config"]);
    assert_eq!(code(&o), 0, "valid, but worth a warning");
    assert!(
        text(&o.stderr).contains("warning") && text(&o.stderr).contains("open relay"),
        "{}",
        text(&o.stderr)
    );
}
