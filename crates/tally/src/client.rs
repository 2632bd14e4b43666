//! Talking to a running `tally serve`.

use std::path::Path;

use anyhow::Context;

/// The API key to use: `--api-key`, else `TALLY_API_KEY`, else the first
/// admin key in the data directory.
pub fn api_key(explicit: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(k) = explicit {
        return Ok(k.to_string());
    }
    if let Ok(k) = std::env::var("TALLY_API_KEY")
        && !k.is_empty()
    {
        return Ok(k);
    }
    let path = data_dir.join("admin-key");
    let k = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no API key: pass --api-key, set TALLY_API_KEY, or run where {} exists",
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
