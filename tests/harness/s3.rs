//! A real S3-compatible server for the hub tests: `moto` in server mode (from PyPI, installed
//! by `tests/run` into `target/pyenv`), on 127.0.0.1, one per test, with one bucket. Killed on
//! drop. Must not: mock the S3 client; the hub talks to it over HTTP as to any store.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::backoff;

/// The bucket every server is made with.
pub const BUCKET: &str = "tandem-hub";

/// A running `moto_server`.
pub struct S3 {
    child: Child,
    port: u16,
    python: PathBuf,
    _log: tempfile::TempDir,
}

impl S3 {
    /// Starts a server with [`BUCKET`] in it; `Err` says why it cannot run here.
    pub fn start() -> Result<S3, String> {
        let python = crate::records::python_with("moto.server, boto3")?;
        // A free port now; moto cannot report the one it picked.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let log = tempfile::Builder::new()
            .prefix("tandem-moto-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let stderr =
            std::fs::File::create(log.path().join("moto.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start moto with {}: {e}", python.display()))?;
        let mut s3 = S3 {
            child,
            port,
            python,
            _log: log,
        };
        let up = backoff::retry_with_backoff(Duration::from_secs(30), || {
            s3.request("PUT", &format!("/{BUCKET}"))
                .ok()
                .filter(|code| *code == 200)
        });
        if up.is_none() {
            let _ = s3.child.kill();
            return Err(format!("moto_server did not come up on port {port}"));
        }
        Ok(s3)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A hub `config.toml` that stores in this server's bucket (presigned URLs on).
    pub fn hub_config(&self) -> String {
        self.hub_config_with("")
    }

    /// The same, with more `[hub]` settings (`key = value` lines).
    pub fn hub_config_with(&self, hub_lines: &str) -> String {
        format!(
            "[hub]\nstorage = \"s3\"\n{hub_lines}[hub.s3]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n",
            self.endpoint()
        )
    }

    /// Every object in the bucket, with its bytes, read with an S3 client of its own
    /// (boto3, which moto's server depends on): what any holder of the bucket could read. An
    /// object collected between the listing and its read is left out.
    pub fn objects(&self) -> Vec<(String, Vec<u8>)> {
        let script = format!(
            "import boto3, base64, json\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1',\n\
                 aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             pages = s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}')\n\
             for page in pages:\n\
             \x20   for o in page.get('Contents', []):\n\
             \x20       try:\n\
             \x20           body = s3.get_object(Bucket='{BUCKET}', Key=o['Key'])['Body'].read()\n\
             \x20       except s3.exceptions.NoSuchKey:\n\
             \x20           continue\n\
             \x20       print(json.dumps([o['Key'], base64.b64encode(body).decode()]))\n",
            self.endpoint()
        );
        let out = Command::new(&self.python)
            .args(["-c", &script])
            .output()
            .expect("run boto3 against moto");
        assert!(
            out.status.success(),
            "listing the bucket failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let (key, body): (String, String) =
                    serde_json::from_str(line).expect("a listed object");
                (
                    key,
                    data_encoding::BASE64
                        .decode(body.as_bytes())
                        .expect("base64 from Python"),
                )
            })
            .collect()
    }

    /// Every key in the bucket (listed only, no object read).
    pub fn keys(&self) -> Vec<String> {
        let script = format!(
            "import boto3\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1',\n\
                 aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}'):\n\
             \x20   for o in page.get('Contents', []):\n\
             \x20       print(o['Key'])\n",
            self.endpoint()
        );
        let out = Command::new(&self.python)
            .args(["-c", &script])
            .output()
            .expect("run boto3 against moto");
        assert!(
            out.status.success(),
            "listing the bucket failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The bytes of one object.
    pub fn object(&self, key: &str) -> Vec<u8> {
        self.objects()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            tcp,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut reply = String::new();
        tcp.read_to_string(&mut reply)?;
        Ok(reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
