//! A real nginx serving a WebDAV folder on 127.0.0.1: the remote cache of the remote
//! tests, as a CI fleet would run one (PUT and GET of any path, no size limit).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
}

impl Nginx {
    /// Starts nginx; `None` (after `skip`) on a host without it.
    pub fn start() -> Option<Nginx> {
        Nginx::start_limited(None)
    }

    /// Starts nginx sending each response at most `rate` (`"2m"`: 2 MB/s), or unlimited.
    pub fn start_limited(rate: Option<&str>) -> Option<Nginx> {
        let Some(nginx) = super::which("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        else {
            assert!(
                !super::in_ci(),
                "CI=true, yet nginx is missing: .ci/install-deps installs it"
            );
            super::skip("nginx is not installed (apt-get install nginx)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        for sub in ["root", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        // A free port: bound and let go (nginx binds it a moment later).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let limit = rate.map(|r| format!("limit_rate {r};")).unwrap_or_default();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  \
             proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  \
             scgi_temp_path {d}/tmp;\n  server {{\n    listen 127.0.0.1:{port};\n    \
             root {d}/root;\n    client_max_body_size 0;\n    {limit}\n    location / {{\n      \
             dav_methods PUT DELETE;\n      create_full_put_path on;\n      \
             dav_access user:rw group:r all:r;\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Nginx {
            dir,
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(server.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// The cache's base URL (a folder under the server's root).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cache", self.port)
    }

    /// The served folder `url()` names.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root/cache")
    }

    /// Whether the server holds `path` (relative to `url()`): `ac/<key>`, `cas/<sha>`.
    pub fn has(&self, path: &str) -> bool {
        self.root().join(path).is_file()
    }

    /// Kills the server (a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}
