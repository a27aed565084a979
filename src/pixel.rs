//! The first-party pixel: a small script on the merchant's pages that keeps the ad click
//! ids a visitor lands with and the ad cookies already set, so a billing event weeks
//! later can still be attributed. It never creates conversions (billing owns those);
//! it only feeds the identity store.
//!
//! The browser sends a beacon `{visitor_id, landing, cookies, identify?}` to
//! `POST /v1/pixel/{pixel_key}/collect`. The pixel key is public: what protects the
//! endpoint is the merchant's origin allow-list, a small body limit and a per-visitor
//! rate limit. The page URL is never sent, only the known click-id parameters of it.

use crate::identity::{self, Touchpoints};
use crate::intent::{Activity, FormStep};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use thiserror::Error;

/// The script served at `/v1/pixel.js`.
pub const SCRIPT: &str = include_str!("pixel.js");

/// A beacon is a handful of ids; anything bigger is not ours.
pub const MAX_BEACON_BYTES: usize = 4096;
const MAX_ORIGINS: usize = 20;
const KEY_PREFIX: &str = "tlp_";
pub const KEY_RANDOM_BYTES: usize = 16;
/// Meta's `fbc` built from an `fbclid`: `fb.<subdomainIndex>.<creationTime ms>.<fbclid>`,
/// with the index of the registrable domain (1), as Meta's pixel writes it.
const FBC_SUBDOMAIN_INDEX: u8 = 1;

/// Landing-page query parameters the pixel keeps (the script sends no others).
pub const LANDING_PARAMS: [&str; 6] =
    ["gclid", "gbraid", "wbraid", "fbclid", "li_fat_id", "ttclid"];
/// Cookies the pixel reads: Meta's, Google Analytics', Google Ads' and LinkedIn's.
pub const COOKIES: [&str; 5] = ["_fbp", "_fbc", "_ga", "_gcl_aw", "li_fat_id"];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PixelError {
    #[error("no pixel has this key")]
    UnknownKey,
    #[error("the merchant of this pixel is disabled")]
    MerchantDisabled,
    #[error(
        "the request has no Origin header; the pixel answers browsers on allowed origins only"
    )]
    OriginRequired,
    #[error("origin {0} is not in this pixel's allowed origins")]
    OriginNotAllowed(String),
    #[error("beacon is not valid: {0}")]
    Malformed(String),
    #[error("beacon is {size} bytes, the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "this merchant links visitors to customers from its server only (browser_identify is off)"
    )]
    IdentifyNotAllowed,
    #[error("too many beacons from this visitor; retry after {retry_after_seconds}s")]
    RateLimited { retry_after_seconds: u32 },
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl PixelError {
    pub fn status(&self) -> u16 {
        match self {
            PixelError::Malformed(_) => 400,
            PixelError::MerchantDisabled
            | PixelError::OriginRequired
            | PixelError::OriginNotAllowed(_)
            | PixelError::IdentifyNotAllowed => 403,
            PixelError::UnknownKey => 404,
            PixelError::TooLarge { .. } => 413,
            PixelError::RateLimited { .. } => 429,
            PixelError::Unavailable(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            PixelError::UnknownKey => "pixel_not_found",
            PixelError::MerchantDisabled => "merchant_disabled",
            PixelError::OriginRequired => "origin_required",
            PixelError::OriginNotAllowed(_) => "origin_not_allowed",
            PixelError::Malformed(_) => "malformed_beacon",
            PixelError::TooLarge { .. } => "payload_too_large",
            PixelError::IdentifyNotAllowed => "identify_not_allowed",
            PixelError::RateLimited { .. } => "rate_limited",
            PixelError::Unavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "code": self.code(), "message": self.to_string() } })
    }
}

/// A merchant's pixel settings, as the operator saves them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelSettings {
    /// Origins whose pages may send beacons: `https://host[:port]`, `https://*.host`
    /// for every subdomain, or `http://localhost[:port]` for development.
    pub allowed_origins: Vec<String>,
    /// Whether the browser may link a visitor to an email or user id (`identify`).
    /// Off: only the merchant's server links them (product event `context.visitor_id`).
    #[serde(default = "default_true")]
    pub browser_identify: bool,
}

fn default_true() -> bool {
    true
}

impl PixelSettings {
    /// Normalises (lower case) and checks the origins; the error names the bad entry.
    pub fn validated(mut self) -> Result<Self, String> {
        if self.allowed_origins.is_empty() {
            return Err("allowed_origins needs at least one origin".into());
        }
        if self.allowed_origins.len() > MAX_ORIGINS {
            return Err(format!(
                "allowed_origins takes at most {MAX_ORIGINS} origins"
            ));
        }
        for origin in &mut self.allowed_origins {
            *origin = origin.trim().to_ascii_lowercase();
            check_origin_pattern(origin)?;
        }
        self.allowed_origins.sort();
        self.allowed_origins.dedup();
        Ok(self)
    }

    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        self.allowed_origins
            .iter()
            .any(|pattern| origin_matches(pattern, &origin))
    }
}

fn check_origin_pattern(origin: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("allowed origin {origin:?} {why}"));
    let (scheme, rest) = match origin.split_once("://") {
        Some(split) => split,
        None => return bad("must start with https://"),
    };
    let host = rest.rsplit_once(':').map_or(rest, |(host, port)| {
        if port.parse::<u16>().is_ok() {
            host
        } else {
            rest
        }
    });
    let local = matches!(host, "localhost" | "127.0.0.1");
    if scheme != "https" && !(scheme == "http" && local) {
        return bad("must use https (http only for localhost)");
    }
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if bare.is_empty() || !bare.split('.').all(label_ok) {
        return bad("is not scheme://host[:port] (no path, no trailing slash)");
    }
    if host.starts_with("*.") && !bare.contains('.') {
        return bad("wildcards need a registrable domain (https://*.example.com)");
    }
    Ok(())
}

fn origin_matches(pattern: &str, origin: &str) -> bool {
    match pattern.split_once("://*.") {
        Some((scheme, domain)) => origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .and_then(|host| host.strip_suffix(domain))
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.') && !sub.contains(':')),
        None => pattern == origin,
    }
}

/// A new public pixel key from fresh random bytes (the edge supplies them).
pub fn generate_key(random: &[u8; KEY_RANDOM_BYTES]) -> String {
    format!("{KEY_PREFIX}{}", hex::encode(random))
}

pub fn is_key(candidate: &str) -> bool {
    candidate.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_RANDOM_BYTES * 2
            && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The two tags a merchant pastes into every page. The first queues calls made before
/// the script has loaded (`tracklayer('identify', …)`); the second loads the script
/// without sending the page's URL as `Referer`.
pub fn snippet(base_url: &str, key: &str) -> String {
    let base = base_url.trim_end_matches('/');
    format!(
        "<script>window.tracklayer=window.tracklayer||function(){{(tracklayer.q=tracklayer.q||[]).push(arguments)}};</script>\n\
         <script async src=\"{base}/v1/pixel.js\" data-key=\"{key}\" referrerpolicy=\"no-referrer\"></script>"
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Beacon {
    visitor_id: String,
    /// Present (even empty) when the beacon reports the browser's ids: the script sends
    /// them when they changed, at most daily otherwise, and not with every page view.
    #[serde(default)]
    landing: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cookies: Option<BTreeMap<String, String>>,
    #[serde(default)]
    identify: Option<Identify>,
    #[serde(default)]
    page: Option<Page>,
    #[serde(default)]
    form: Option<FormEvent>,
}

/// The page the visitor is on: its path (never the query or fragment) and title.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    path: String,
    #[serde(default)]
    title: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormEvent {
    form: String,
    step: FormStep,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identify {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// What the edge knows about the request besides its body.
#[derive(Debug, Clone, Copy)]
pub struct BeaconContext<'a> {
    pub now_ms: i64,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// What one beacon adds to the identity store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capture {
    /// `visitor:<id>`: the identity-store key of this browser.
    pub visitor_key: String,
    pub touchpoints: Touchpoints,
    /// Keys (`email:…`, `customer:…`) this visitor is now known to be.
    pub link_keys: Vec<String>,
    /// Whether the beacon reported the browser's ids (else `touchpoints` is not stored).
    #[serde(default = "default_true")]
    pub reports_ids: bool,
    /// The page view or form event the beacon reports, for intent scoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

pub fn visitor_key(visitor_id: &str) -> String {
    format!("visitor:{visitor_id}")
}

pub use crate::identity::is_visitor_id;

/// Parses and checks a beacon into what it adds to the identity store. Click ids in the
/// landing URL win over cookies: a new click must replace an older one.
pub fn capture(
    body: &[u8],
    settings: &PixelSettings,
    context: BeaconContext<'_>,
) -> Result<Capture, PixelError> {
    if body.len() > MAX_BEACON_BYTES {
        return Err(PixelError::TooLarge {
            size: body.len(),
            limit: MAX_BEACON_BYTES,
        });
    }
    let beacon: Beacon =
        serde_json::from_slice(body).map_err(|e| PixelError::Malformed(e.to_string()))?;
    if !is_visitor_id(&beacon.visitor_id) {
        return Err(PixelError::Malformed(
            "visitor_id must be 32 lowercase hex digits".into(),
        ));
    }
    let reports_ids =
        beacon.landing.is_some() || beacon.cookies.is_some() || beacon.identify.is_some();
    let activity = match (&beacon.page, &beacon.form) {
        (Some(_), Some(_)) => {
            return Err(PixelError::Malformed(
                "a beacon reports a page view or a form event, not both".into(),
            ))
        }
        (Some(page), None) => Some(
            Activity::page_view(&page.path, page.title.as_deref())
                .map_err(PixelError::Malformed)?,
        ),
        (None, Some(form)) => Some(
            Activity::form(&form.form, form.step, form.path.as_deref())
                .map_err(PixelError::Malformed)?,
        ),
        (None, None) => None,
    };
    if !reports_ids && activity.is_none() {
        return Err(PixelError::Malformed(
            "the beacon reports nothing (no ids, page or form)".into(),
        ));
    }
    let no_values = BTreeMap::new();
    let landing_values = beacon.landing.as_ref().unwrap_or(&no_values);
    let cookie_values = beacon.cookies.as_ref().unwrap_or(&no_values);
    if let Some(name) = landing_values
        .keys()
        .find(|k| !LANDING_PARAMS.contains(&k.as_str()))
    {
        return Err(PixelError::Malformed(format!(
            "landing.{name} is not a click id the pixel keeps ({})",
            LANDING_PARAMS.join(", ")
        )));
    }
    if let Some(name) = cookie_values
        .keys()
        .find(|k| !COOKIES.contains(&k.as_str()))
    {
        return Err(PixelError::Malformed(format!(
            "cookies.{name} is not a cookie the pixel reads ({})",
            COOKIES.join(", ")
        )));
    }
    let landing = |name: &str| {
        landing_values
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let cookie = |name: &str| {
        cookie_values
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };

    let mut touchpoints = Touchpoints::default();
    let mut set = |name: &str, value: Option<&str>, from_cookie: bool| -> Result<(), PixelError> {
        let Some(value) = value else { return Ok(()) };
        match touchpoints.set(name, value) {
            Ok(_) => Ok(()),
            // Cookies are written by other vendors' scripts: one we cannot read is skipped,
            // not a reason to lose the click ids beside it.
            Err(_) if from_cookie => Ok(()),
            Err(reason) => Err(PixelError::Malformed(format!("landing: {reason}"))),
        }
    };
    set(
        "gclid",
        landing("gclid").or(cookie("_gcl_aw").and_then(gclid_from_gcl_aw)),
        false,
    )?;
    set("gbraid", landing("gbraid"), false)?;
    set("wbraid", landing("wbraid"), false)?;
    set("ttclid", landing("ttclid"), false)?;
    set("li_fat_id", landing("li_fat_id"), false)?;
    set(
        "li_fat_id",
        landing("li_fat_id")
            .is_none()
            .then(|| cookie("li_fat_id"))
            .flatten(),
        true,
    )?;
    let fbc = match landing("fbclid") {
        Some(fbclid) => Some(fbc_for_click(fbclid, cookie("_fbc"), context.now_ms)),
        None => cookie("_fbc").map(str::to_string),
    };
    set("_fbc", fbc.as_deref(), landing("fbclid").is_none())?;
    set("_fbp", cookie("_fbp"), true)?;
    set("_ga", cookie("_ga"), true)?;
    // The request's own address and browser: never from the body.
    set(
        "ip",
        context
            .client_ip
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()),
        true,
    )?;
    set("user_agent", context.user_agent, true)?;
    touchpoints.captured_at = Some(context.now_ms / 1000);

    let mut link_keys = Vec::new();
    if let Some(identify) = &beacon.identify {
        if !settings.browser_identify {
            return Err(PixelError::IdentifyNotAllowed);
        }
        let email = identify
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        let user_id = identify
            .user_id
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        if email.is_none() && user_id.is_none() {
            return Err(PixelError::Malformed(
                "identify needs an email or a user_id".into(),
            ));
        }
        if let Some(user_id) = user_id {
            if user_id.chars().count() > 256 {
                return Err(PixelError::Malformed(
                    "identify.user_id is longer than 256 characters".into(),
                ));
            }
            link_keys.push(identity::customer_key(user_id));
        }
        if let Some(email) = email {
            let email = crate::hashing::normalize_email(email)
                .filter(|e| e.len() <= 320)
                .ok_or_else(|| {
                    PixelError::Malformed("identify.email is not an email address".into())
                })?;
            link_keys.push(identity::email_key(&email));
        }
    }
    Ok(Capture {
        visitor_key: visitor_key(&beacon.visitor_id),
        touchpoints,
        link_keys,
        reports_ids,
        activity,
    })
}

/// `_gcl_aw` is `GCL.<unix s>.<gclid>`; the click id is everything after the second dot.
fn gclid_from_gcl_aw(cookie: &str) -> Option<&str> {
    let mut parts = cookie.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("GCL"), Some(time), Some(gclid))
            if time.bytes().all(|b| b.is_ascii_digit()) && !gclid.is_empty() =>
        {
            Some(gclid)
        }
        _ => None,
    }
}

/// The `fbc` for a click seen in the landing URL: the `_fbc` cookie when it already
/// holds this very click (it keeps the original creation time), else a new value.
fn fbc_for_click(fbclid: &str, fbc_cookie: Option<&str>, now_ms: i64) -> String {
    match fbc_cookie {
        Some(cookie) if cookie.split('.').nth(3) == Some(fbclid) => cookie.to_string(),
        _ => format!("fb.{FBC_SUBDOMAIN_INDEX}.{now_ms}.{fbclid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISITOR: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> PixelSettings {
        PixelSettings {
            allowed_origins: vec!["https://example.com".into(), "https://*.example.com".into()],
            browser_identify: true,
        }
    }

    fn context() -> BeaconContext<'static> {
        BeaconContext {
            now_ms: 1_795_000_000_123,
            client_ip: Some("203.0.113.7"),
            user_agent: Some("Mozilla/5.0 (Macintosh) Safari/605.1.15"),
        }
    }

    fn beacon(json: serde_json::Value) -> Result<Capture, PixelError> {
        capture(json.to_string().as_bytes(), &settings(), context())
    }

    #[test]
    fn origins_are_checked_when_saved_and_matched_exactly_or_by_subdomain() {
        let saved = PixelSettings {
            allowed_origins: vec![
                " HTTPS://Example.com ".into(),
                "https://*.example.com".into(),
                "http://localhost:8787".into(),
            ],
            browser_identify: true,
        }
        .validated()
        .unwrap();
        assert_eq!(saved.allowed_origins[0], "http://localhost:8787");
        assert!(saved.allows("https://example.com"));
        assert!(saved.allows("https://app.example.com"));
        assert!(saved.allows("https://a.b.example.com"));
        assert!(saved.allows("http://localhost:8787"));
        assert!(!saved.allows("https://evilexample.com"));
        assert!(!saved.allows("https://example.com.evil.net"));
        assert!(!saved.allows("http://example.com"));
        assert!(!saved.allows("https://app.example.com:8443"));
        assert!(!saved.allows("null"));
        for bad in [
            "example.com",
            "http://example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://*",
            "https://*.com",
            "https://exa mple.com",
            "",
        ] {
            let refused = PixelSettings {
                allowed_origins: vec![bad.into()],
                browser_identify: true,
            }
            .validated();
            assert!(refused.is_err(), "{bad:?} was accepted");
        }
        assert!(PixelSettings {
            allowed_origins: vec![],
            browser_identify: true
        }
        .validated()
        .is_err());
    }

    #[test]
    fn keys_and_visitor_ids_have_one_shape() {
        let key = generate_key(&[0xab; KEY_RANDOM_BYTES]);
        assert_eq!(key, format!("tlp_{}", "ab".repeat(16)));
        assert!(is_key(&key));
        assert!(!is_key("tlp_AB"));
        assert!(!is_key(&key.replace("tlp_", "tlk_")));
        assert!(is_visitor_id(VISITOR));
        assert!(!is_visitor_id(&VISITOR.to_uppercase()));
        let snippet = snippet("https://edge.example.net/", &key);
        assert!(snippet.contains("src=\"https://edge.example.net/v1/pixel.js\""));
        assert!(snippet.contains(&format!("data-key=\"{key}\"")));
    }

    #[test]
    fn landing_click_ids_and_cookies_become_touchpoints() {
        let capture = beacon(json!({
            "visitor_id": VISITOR,
            "landing": {"gclid": "Cj0KCQiA-example", "fbclid": "IwAR2F4-dbP0l7Mn1Iaw", "li_fat_id": "b1c2d3e4-0000-4000-8000-000000000001", "ttclid": "E.C.P.tt123"},
            "cookies": {"_fbp": "fb.1.1794990000000.1098115397", "_ga": "GA1.1.1234567890.1794990000", "_gcl_aw": "GCL.1794990000.OlderClick"}
        }))
        .unwrap();
        let t = &capture.touchpoints;
        assert_eq!(capture.visitor_key, format!("visitor:{VISITOR}"));
        // The landing gclid wins over the older click in _gcl_aw.
        assert_eq!(t.gclid.as_deref(), Some("Cj0KCQiA-example"));
        assert_eq!(
            t.fbc.as_deref(),
            Some("fb.1.1795000000123.IwAR2F4-dbP0l7Mn1Iaw")
        );
        assert_eq!(t.fbp.as_deref(), Some("fb.1.1794990000000.1098115397"));
        assert_eq!(t.ga_client_id.as_deref(), Some("1234567890.1794990000"));
        assert_eq!(
            t.li_fat_id.as_deref(),
            Some("b1c2d3e4-0000-4000-8000-000000000001")
        );
        assert_eq!(t.ttclid.as_deref(), Some("E.C.P.tt123"));
        assert_eq!(t.client_ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(
            t.user_agent.as_deref(),
            Some("Mozilla/5.0 (Macintosh) Safari/605.1.15")
        );
        assert_eq!(t.captured_at, Some(1_795_000_000));
        assert!(capture.link_keys.is_empty());
    }

    #[test]
    fn fbc_keeps_the_cookie_for_the_same_click_and_replaces_an_older_click() {
        let same = beacon(json!({
            "visitor_id": VISITOR,
            "landing": {"fbclid": "IwAR-same"},
            "cookies": {"_fbc": "fb.1.1794000000000.IwAR-same"}
        }))
        .unwrap();
        assert_eq!(
            same.touchpoints.fbc.as_deref(),
            Some("fb.1.1794000000000.IwAR-same")
        );
        let newer = beacon(json!({
            "visitor_id": VISITOR,
            "landing": {"fbclid": "IwAR-new"},
            "cookies": {"_fbc": "fb.1.1794000000000.IwAR-old"}
        }))
        .unwrap();
        assert_eq!(
            newer.touchpoints.fbc.as_deref(),
            Some("fb.1.1795000000123.IwAR-new")
        );
        let cookie_only = beacon(json!({
            "visitor_id": VISITOR,
            "cookies": {"_fbc": "fb.1.1794000000000.IwAR-old", "_gcl_aw": "GCL.1794990000.CookieClick", "li_fat_id": "li-cookie"}
        }))
        .unwrap();
        assert_eq!(
            cookie_only.touchpoints.fbc.as_deref(),
            Some("fb.1.1794000000000.IwAR-old")
        );
        assert_eq!(
            cookie_only.touchpoints.gclid.as_deref(),
            Some("CookieClick")
        );
        assert_eq!(
            cookie_only.touchpoints.li_fat_id.as_deref(),
            Some("li-cookie")
        );
    }

    #[test]
    fn unreadable_vendor_cookies_are_skipped_but_bad_beacons_are_refused() {
        let skipped = beacon(json!({
            "visitor_id": VISITOR,
            "landing": {"gclid": "Cj0"},
            "cookies": {"_ga": "not-a-ga-cookie", "_gcl_aw": "garbage"}
        }))
        .unwrap();
        assert_eq!(skipped.touchpoints.gclid.as_deref(), Some("Cj0"));
        assert_eq!(skipped.touchpoints.ga_client_id, None);

        let refused = [
            (json!({"visitor_id": "short"}), "visitor_id"),
            (
                json!({"visitor_id": VISITOR, "landing": {"utm_source": "x"}}),
                "landing.utm_source",
            ),
            (
                json!({"visitor_id": VISITOR, "cookies": {"session": "x"}}),
                "cookies.session",
            ),
            (
                json!({"visitor_id": VISITOR, "page_url": "https://example.com/?email=a@b.c"}),
                "page_url",
            ),
            (
                json!({"visitor_id": VISITOR, "landing": {"gclid": "x".repeat(600)}}),
                "longer than",
            ),
            (
                json!({"visitor_id": VISITOR, "identify": {}}),
                "email or a user_id",
            ),
            (
                json!({"visitor_id": VISITOR, "identify": {"email": "nobody"}}),
                "not an email",
            ),
        ];
        for (body, expected) in refused {
            match beacon(body.clone()) {
                Err(PixelError::Malformed(reason)) => {
                    assert!(reason.contains(expected), "{body}: {reason}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        let big = vec![b' '; MAX_BEACON_BYTES + 1];
        assert_eq!(
            capture(&big, &settings(), context()).unwrap_err().status(),
            413
        );
        assert_eq!(
            capture(b"not json", &settings(), context())
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn identify_links_the_visitor_to_email_and_user_id_unless_the_merchant_forbids_it() {
        let linked = beacon(json!({
            "visitor_id": VISITOR,
            "identify": {"email": "  Ann@Example.COM ", "user_id": "u_42"}
        }))
        .unwrap();
        assert_eq!(
            linked.link_keys,
            vec!["customer:u_42", "email:ann@example.com"]
        );

        let server_only = PixelSettings {
            browser_identify: false,
            ..settings()
        };
        let body =
            json!({"visitor_id": VISITOR, "identify": {"email": "ann@example.com"}}).to_string();
        let err = capture(body.as_bytes(), &server_only, context()).unwrap_err();
        assert_eq!((err.status(), err.code()), (403, "identify_not_allowed"));
    }

    #[test]
    fn the_address_comes_from_the_request_and_must_be_an_ip() {
        let ctx = BeaconContext {
            client_ip: Some("not an ip"),
            ..context()
        };
        let body = json!({"visitor_id": VISITOR, "landing": {}}).to_string();
        let capture = capture(body.as_bytes(), &settings(), ctx).unwrap();
        assert_eq!(capture.touchpoints.client_ip, None);
        let v6 = BeaconContext {
            client_ip: Some("2001:db8::1"),
            ..context()
        };
        let capture = super::capture(body.as_bytes(), &settings(), v6).unwrap();
        assert_eq!(
            capture.touchpoints.client_ip.as_deref(),
            Some("2001:db8::1")
        );
    }

    #[test]
    fn page_views_keep_path_and_title_only_and_form_events_are_checked() {
        let body = json!({
            "visitor_id": VISITOR,
            "page": { "path": "/Pricing/?email=ada@example.com#annual", "title": "Pricing" }
        });
        let capture = beacon(body).unwrap();
        assert!(!capture.reports_ids, "a page view alone stores no ids");
        assert_eq!(
            capture.activity,
            Some(Activity::PageView {
                path: "/pricing".into(),
                title: Some("Pricing".into())
            })
        );
        let form = beacon(json!({
            "visitor_id": VISITOR,
            "form": { "form": "demo", "step": "start", "path": "/demo" }
        }))
        .unwrap();
        assert_eq!(
            form.activity,
            Some(Activity::Form {
                form: "demo".into(),
                step: FormStep::Start,
                path: Some("/demo".into())
            })
        );
        let first = beacon(json!({
            "visitor_id": VISITOR, "landing": {}, "cookies": {}, "page": { "path": "/" }
        }))
        .unwrap();
        assert!(first.reports_ids && first.activity.is_some());
        for bad in [
            json!({ "visitor_id": VISITOR }),
            json!({ "visitor_id": VISITOR, "page": { "path": "https://acme.example/pricing" } }),
            json!({ "visitor_id": VISITOR, "form": { "form": "demo", "step": "abandon" } }),
            json!({ "visitor_id": VISITOR, "form": { "form": "Demo Form!", "step": "start" } }),
            json!({ "visitor_id": VISITOR, "page": { "path": "/" }, "form": { "form": "demo", "step": "start" } }),
        ] {
            assert!(
                matches!(beacon(bad.clone()), Err(PixelError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_have_statuses_codes_and_json_bodies() {
        let err = PixelError::OriginNotAllowed("https://evil.example".into());
        assert_eq!(err.status(), 403);
        assert_eq!(err.body()["error"]["code"], "origin_not_allowed");
        assert_eq!(PixelError::UnknownKey.status(), 404);
        assert_eq!(
            PixelError::RateLimited {
                retry_after_seconds: 60
            }
            .status(),
            429
        );
    }
}
