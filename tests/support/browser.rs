//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and `chromium-driver`,
//! which `scripts/setup --test` installs), for the console's tests. Each browser has its own
//! ChromeDriver port and profile directory, and is stopped, with its processes, even when the
//! test fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use uuid::Uuid;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    pub client: Client,
    /// The console's origin: `http://127.0.0.1:PORT`.
    base: String,
    driver: tokio::process::Child,
    profile: PathBuf,
}

/// Where the screenshots go: `target/screenshots`, which git ignores.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/screenshots"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium whose pages are on `base`.
    pub async fn start(base: &str) -> Browser {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: the console's tests need Debian's chromium and chromium-driver (scripts/setup --test installs them)"
            );
        }
        let port = free_port();
        let profile = std::env::temp_dir().join(format!("tagcast-chromium-{}", Uuid::new_v4()));
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--log-level=WARNING")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group, so that Chromium's processes go with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("ChromeDriver starts");
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = reqwest::get(format!("{webdriver}/status"))
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if ready.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "ChromeDriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    // This machine's network is closed: no calls home.
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--no-first-run", "--disable-extensions",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("a TLS configuration")
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .expect("a WebDriver session");
        Browser {
            client,
            base: base.trim_end_matches('/').to_owned(),
            driver,
            profile,
        }
    }

    /// Ends the session, which quits Chromium, and stops ChromeDriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        self.kill_group();
        let _ = std::fs::remove_dir_all(&self.profile);
    }

    fn kill_group(&self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The first element `css` selects, waiting up to ten seconds for it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Clicks what `css` selects; when that loads a page, waits until it has loaded.
    pub async fn click(&self, css: &str) {
        self.mark_page().await;
        self.find(css).await.click().await.unwrap();
        self.wait_for_new_page().await;
    }

    /// Clicks a button that asks first, and says yes.
    pub async fn click_and_confirm(&self, css: &str) {
        self.mark_page().await;
        self.find(css).await.click().await.unwrap();
        self.client.accept_alert().await.unwrap();
        self.wait_for_new_page().await;
    }

    async fn mark_page(&self) {
        self.script("window.tagcastTestOldPage = true; return null")
            .await;
    }

    /// Waits until the marked page is replaced by one that has loaded (a click that loads
    /// nothing waits a moment, then goes on).
    async fn wait_for_new_page(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let loaded = self
                .client
                .execute(
                    "return window.tagcastTestOldPage === undefined && document.readyState === 'complete'",
                    Vec::new(),
                )
                .await
                .ok();
            if loaded == Some(Value::Bool(true)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces what a field holds.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// The page's text, as a person reads it.
    pub async fn body_text(&self) -> String {
        self.text("body").await
    }

    pub async fn script(&self, js: &str) -> Value {
        self.client.execute(js, Vec::new()).await.unwrap()
    }

    /// Reloads the page until `css` holds `text`.
    pub async fn reload_until(&self, css: &str, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let found = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if found.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never held {text:?} on {} (it held {found:?})",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.client.refresh().await.unwrap();
        }
    }

    /// Saves what the browser shows, for people to look at.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    /// A test that failed before `close` still leaves no browser running.
    fn drop(&mut self) {
        self.kill_group();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
