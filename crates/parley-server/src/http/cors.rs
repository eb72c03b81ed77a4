//! Cross-origin access for browser apps: which origins may call the API, and the preflight answer.

use std::fmt;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// The origins whose pages may read API responses (`--cors-allowed-origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: any page. The API is authenticated by a header key, never a cookie, so a page
    /// elsewhere gains nothing it could not already do with the key.
    Any,
    /// Only these origins, each as a browser sends it (`https://app.example.com`, `http://localhost:5173`).
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Parses the flag's value: `*`, or comma-separated origins, each normalised the way a
    /// browser writes its `Origin` header (lower-case scheme and host, default port dropped).
    pub fn parse(value: &str) -> Result<Self, String> {
        let entries: Vec<&str> = value.split(',').map(str::trim).collect();
        if entries == ["*"] {
            return Ok(Self::Any);
        }
        let mut origins = Vec::new();
        for entry in entries {
            let origin = origin_of(entry)?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(Self::List(origins))
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::List(origins) => f.write_str(&origins.join(",")),
        }
    }
}

/// One configured origin in the form browsers send it, or why it is not an origin.
fn origin_of(entry: &str) -> Result<String, String> {
    let why = |reason: &str| format!("{entry:?} is not an origin like https://app.example.com: {reason}");
    if entry == "*" {
        return Err(why("`*` stands alone, not in a list"));
    }
    let url = url::Url::parse(entry).map_err(|e| why(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(why("the scheme must be http or https"));
    }
    // An origin is scheme, host and port only; a path here would never match any browser.
    if url.path() != "/" || entry.ends_with('/') || url.query().is_some() || url.fragment().is_some() {
        return Err(why("no path, query or trailing slash"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(why("no user or password"));
    }
    Ok(url.origin().ascii_serialization())
}

/// How long a browser may reuse a preflight answer; Chromium caps it at two hours anyway.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// The CORS layer for the API: preflights are answered here, before authentication (browsers
/// never send the key on a preflight), and every response, errors included, carries
/// `Access-Control-Allow-Origin` for an allowed origin so the page can read the body.
pub fn layer(allowed: &AllowedOrigins) -> CorsLayer {
    let origins = match allowed {
        AllowedOrigins::Any => AllowOrigin::any(),
        AllowedOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .map(|o| HeaderValue::from_str(o).expect("a serialised URL origin is a valid header value")),
        ),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        // Echoing what the page asks for lets SDKs that add their own headers through; the key
        // is what authorises a request, not its header names.
        .allow_headers(AllowHeaders::mirror_request())
        // A browser app honouring a 503's retry hint has to be allowed to read it.
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("content-disposition"),
        ])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// Answers a preflight with `204 No Content`, as hosted APIs do; the CORS layer would say 200.
pub async fn preflight_no_content(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut response = next.run(req).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_star_allows_any_origin() {
        assert_eq!(AllowedOrigins::parse("*"), Ok(AllowedOrigins::Any));
        assert_eq!(AllowedOrigins::parse(" * "), Ok(AllowedOrigins::Any));
    }

    #[test]
    fn origins_are_normalised_as_browsers_send_them() {
        assert_eq!(
            AllowedOrigins::parse(
                "https://App.Example.com:443, http://localhost:5173,https://app.example.com"
            ),
            Ok(AllowedOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:5173".into(),
            ]))
        );
    }

    #[test]
    fn anything_but_an_origin_is_refused_with_the_reason() {
        for bad in [
            "",
            "https://a.example,*",
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "https://user@app.example.com",
            "https://a.example,,https://b.example",
        ] {
            let err = AllowedOrigins::parse(bad).unwrap_err();
            assert!(err.contains("is not an origin"), "{bad:?}: {err}");
        }
    }
}
