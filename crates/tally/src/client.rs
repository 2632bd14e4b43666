//! Talking to a running `tally serve`.

use anyhow::Context;

use crate::config::Config;

/// The API key to use: `--api-key`, else `TALLY_API_KEY`, else
/// `[client] api_key` of the configuration, else the first admin key in
/// the data directory.
pub fn api_key(explicit: Option<&str>, cfg: &Config) -> anyhow::Result<String> {
    if let Some(k) = explicit {
        return Ok(k.to_string());
    }
    if let Ok(k) = std::env::var("TALLY_API_KEY")
        && !k.is_empty()
    {
        return Ok(k);
    }
    if let Some(k) = cfg.client.api_key.as_deref().filter(|k| !k.is_empty()) {
        return Ok(k.to_string());
    }
    let path = cfg.data_dir.join("admin-key");
    let k = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no API key: pass --api-key, set TALLY_API_KEY or [client] api_key in the configuration, or run where {} exists",
            path.display()
        )
    })?;
    Ok(k.trim().to_string())
}

/// An HTTP client for the server.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .build()
        .expect("an HTTP client without TLS always builds")
}

/// Turns a non-2xx answer into an error carrying the server's message.
pub async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            Some(format!(
                "{} ({})",
                v.get("message")?.as_str()?,
                v.get("code")?.as_str()?
            ))
        })
        .unwrap_or(body);
    anyhow::bail!("the server answered {status}: {message}")
}

/// `--server` and `--api-key`, shared by the commands that can ask a
/// running `tally serve` instead of using the data directory.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// Ask this running server (http://ADDR) instead of using the data
    /// directory (which a running server holds).
    #[arg(long)]
    pub server: Option<String>,
    /// API key for --server (default: TALLY_API_KEY, then `[client]
    /// api_key` of the configuration, then <data-dir>/admin-key).
    #[arg(long)]
    pub api_key: Option<String>,
}

/// A running server, with the key to ask it.
pub struct Server {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ServerArgs {
    /// The server to ask: `--server`, else `[client] server` of the
    /// configuration; `None` means: use the data directory.
    pub fn connect(&self, cfg: &Config) -> anyhow::Result<Option<Server>> {
        let Some(url) = self.server.as_ref().or(cfg.client.server.as_ref()) else {
            return Ok(None);
        };
        Ok(Some(Server {
            base: url.trim_end_matches('/').to_string(),
            key: api_key(self.api_key.as_deref(), cfg)?,
            http: http(),
        }))
    }
}

impl Server {
    /// A request to `path` (`/v1/...`), authenticated.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    /// Sends a request and returns its JSON answer, or the server's error.
    pub async fn json(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
        let resp = request
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        Ok(check(resp).await?.json().await?)
    }
}
