//! The HTTP surface as data: every route the worker serves, matched here and dispatched
//! by the edge. `openapi.json` documents exactly this table (a test checks both ways).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    Health,
    OpenApi,
    StripeWebhook,
    SourceWebhook,
    ProductEvents,
    PixelScript,
    PixelCollect,
    PixelPreflight,
    MerchantSelf,
    MerchantView,
    AdminListMerchants,
    AdminCreateMerchant,
    AdminGetMerchant,
    AdminUpdateMerchant,
    AdminDeleteMerchant,
    AdminPutIntegration,
    AdminDeleteIntegration,
    AdminListApiKeys,
    AdminCreateApiKey,
    AdminRevokeApiKey,
    AdminGetPixel,
    AdminPutPixel,
    AdminDeletePixel,
    AdminView,
    AdminReplayDeadLetter,
    AdminReplayDeadLetters,
    AdminEraseCustomer,
    AdminRejectedRequests,
    AdminCronRuns,
    AdminMetrics,
    AdminRotateSecrets,
    AdminGetIntent,
    AdminPutIntent,
    AdminSeedSync,
    AdminAuditVerify,
    AdminAuditExport,
    MerchantAuditExport,
    MerchantHealth,
    AdminHealth,
    AdminHealthSettings,
    AdminHealthEvaluate,
    AdminPauseDestination,
    AdminResumeDestination,
    MerchantRfm,
    AdminRfm,
    AdminRfmCompute,
    IntentOverview,
    IntentVisitors,
    IntentTimeline,
    IntentQueue,
    AppHome,
    AppSignIn,
    AppSignOut,
    AppVisitor,
    AppStyles,
    AppScript,
    AppHealth,
    AppResume,
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// Path with `{name}` parameters, as in the OpenAPI document.
    pub pattern: &'static str,
    pub id: RouteId,
}

const fn route(method: &'static str, pattern: &'static str, id: RouteId) -> Route {
    Route {
        method,
        pattern,
        id,
    }
}

pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", RouteId::Health),
    route("GET", "/v1/openapi.json", RouteId::OpenApi),
    route(
        "POST",
        "/v1/integrations/stripe/subscription-events",
        RouteId::StripeWebhook,
    ),
    route(
        "POST",
        "/v1/integrations/{source}/events",
        RouteId::SourceWebhook,
    ),
    route("POST", "/v1/product-events", RouteId::ProductEvents),
    route("GET", "/v1/pixel.js", RouteId::PixelScript),
    route(
        "POST",
        "/v1/pixel/{pixel_key}/collect",
        RouteId::PixelCollect,
    ),
    route(
        "OPTIONS",
        "/v1/pixel/{pixel_key}/collect",
        RouteId::PixelPreflight,
    ),
    route("GET", "/v1/merchants/{merchant_id}", RouteId::MerchantSelf),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/{view}",
        RouteId::MerchantView,
    ),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/intent",
        RouteId::IntentOverview,
    ),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/intent/visitors",
        RouteId::IntentVisitors,
    ),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/intent/visitors/{visitor_id}",
        RouteId::IntentTimeline,
    ),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/intent/queue",
        RouteId::IntentQueue,
    ),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/audit/export",
        RouteId::MerchantAuditExport,
    ),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/audit/verify",
        RouteId::AdminAuditVerify,
    ),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/audit/export",
        RouteId::AdminAuditExport,
    ),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/health",
        RouteId::MerchantHealth,
    ),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/health",
        RouteId::AdminHealth,
    ),
    route(
        "PUT",
        "/v1/admin/merchants/{merchant_id}/health/settings",
        RouteId::AdminHealthSettings,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/health/evaluate",
        RouteId::AdminHealthEvaluate,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/destinations/{name}/pause",
        RouteId::AdminPauseDestination,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/destinations/{name}/resume",
        RouteId::AdminResumeDestination,
    ),
    route(
        "GET",
        "/v1/merchants/{merchant_id}/rfm",
        RouteId::MerchantRfm,
    ),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/rfm",
        RouteId::AdminRfm,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/rfm/compute",
        RouteId::AdminRfmCompute,
    ),
    route("GET", "/app", RouteId::AppHome),
    route("POST", "/app/session", RouteId::AppSignIn),
    route("POST", "/app/sign-out", RouteId::AppSignOut),
    route("GET", "/app/visitors/{visitor_id}", RouteId::AppVisitor),
    route("GET", "/app/health", RouteId::AppHealth),
    route("POST", "/app/health/resume", RouteId::AppResume),
    route("GET", "/app/assets/app.css", RouteId::AppStyles),
    route("GET", "/app/assets/app.js", RouteId::AppScript),
    route("GET", "/v1/admin/merchants", RouteId::AdminListMerchants),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/intent",
        RouteId::AdminGetIntent,
    ),
    route(
        "PUT",
        "/v1/admin/merchants/{merchant_id}/intent",
        RouteId::AdminPutIntent,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/intent/seed-sync",
        RouteId::AdminSeedSync,
    ),
    route("POST", "/v1/admin/merchants", RouteId::AdminCreateMerchant),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}",
        RouteId::AdminGetMerchant,
    ),
    route(
        "PATCH",
        "/v1/admin/merchants/{merchant_id}",
        RouteId::AdminUpdateMerchant,
    ),
    route(
        "DELETE",
        "/v1/admin/merchants/{merchant_id}",
        RouteId::AdminDeleteMerchant,
    ),
    route(
        "PUT",
        "/v1/admin/merchants/{merchant_id}/{kind}/{name}",
        RouteId::AdminPutIntegration,
    ),
    route(
        "DELETE",
        "/v1/admin/merchants/{merchant_id}/{kind}/{name}",
        RouteId::AdminDeleteIntegration,
    ),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/api-keys",
        RouteId::AdminListApiKeys,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/api-keys",
        RouteId::AdminCreateApiKey,
    ),
    route(
        "DELETE",
        "/v1/admin/merchants/{merchant_id}/api-keys/{key_id}",
        RouteId::AdminRevokeApiKey,
    ),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/pixel",
        RouteId::AdminGetPixel,
    ),
    route(
        "PUT",
        "/v1/admin/merchants/{merchant_id}/pixel",
        RouteId::AdminPutPixel,
    ),
    route(
        "DELETE",
        "/v1/admin/merchants/{merchant_id}/pixel",
        RouteId::AdminDeletePixel,
    ),
    route(
        "GET",
        "/v1/admin/merchants/{merchant_id}/{view}",
        RouteId::AdminView,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/dead-letters/{job_id}/replay",
        RouteId::AdminReplayDeadLetter,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/dead-letters/replay",
        RouteId::AdminReplayDeadLetters,
    ),
    route(
        "POST",
        "/v1/admin/merchants/{merchant_id}/erasure",
        RouteId::AdminEraseCustomer,
    ),
    route(
        "GET",
        "/v1/admin/rejected-requests",
        RouteId::AdminRejectedRequests,
    ),
    route("GET", "/v1/admin/cron-runs", RouteId::AdminCronRuns),
    route("GET", "/v1/admin/metrics", RouteId::AdminMetrics),
    route(
        "POST",
        "/v1/admin/rotate-secrets",
        RouteId::AdminRotateSecrets,
    ),
];

/// Why a request path is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `.` or `..` as a segment, spelled plainly or percent-encoded.
    DotSegment,
    /// `//`, or a trailing `/`: an empty segment.
    EmptySegment,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::DotSegment => "the path contains a . or .. segment",
            PathError::EmptySegment => "the path contains an empty segment",
        }
    }
}

/// Checks the path exactly as the client sent it, before any normalisation: a URL
/// parser resolves `api-keys/..` to the merchant itself, so `DELETE` of an API key
/// named `..` deleted the merchant. Percent-encoded dots count as dots.
pub fn check_raw_path(raw_path: &str) -> Result<(), PathError> {
    if raw_path == "/" {
        return Ok(());
    }
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Err(PathError::EmptySegment);
    };
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
    }
    Ok(())
}

/// The path part of a request URL as received (`scheme://host/path?query`), without
/// decoding or resolving anything.
pub fn raw_path_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path_and_query = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    let end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    &path_and_query[..end]
}

#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    Found {
        id: RouteId,
        params: Vec<(&'static str, String)>,
    },
    /// The path exists with other methods.
    MethodNotAllowed {
        allowed: Vec<&'static str>,
    },
    NotFound,
}

/// A route with its pattern split once: resolving runs on every request, so the
/// table is compiled and ordered the first time it is needed, not per call.
struct CompiledRoute {
    route: &'static Route,
    segments: Vec<&'static str>,
    literals: usize,
}

/// Routes ordered by specificity: more literal segments first, so
/// `/merchants/{id}/api-keys` wins over `/merchants/{id}/{view}`.
fn compiled_routes() -> &'static [CompiledRoute] {
    static COMPILED: std::sync::OnceLock<Vec<CompiledRoute>> = std::sync::OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut routes: Vec<CompiledRoute> = ROUTES
            .iter()
            .map(|route| {
                let segments: Vec<&'static str> =
                    route.pattern.trim_start_matches('/').split('/').collect();
                let literals = segments.iter().filter(|s| !s.starts_with('{')).count();
                CompiledRoute {
                    route,
                    segments,
                    literals,
                }
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.literals));
        routes
    })
}

/// Matches the path's segments against one pattern's.
fn match_segments(pattern: &[&'static str], path: &[&str]) -> Option<Vec<(&'static str, String)>> {
    if pattern.len() != path.len() {
        return None;
    }
    let mut params = Vec::new();
    for (expected, actual) in pattern.iter().zip(path) {
        match expected.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !actual.is_empty() && *actual != "." && *actual != ".." => {
                params.push((name, actual.to_string()))
            }
            Some(_) => return None,
            None if expected == actual => {}
            None => return None,
        }
    }
    Some(params)
}

pub fn resolve(method: &str, path: &str) -> Resolution {
    let Some(relative) = path.strip_prefix('/') else {
        return Resolution::NotFound;
    };
    let path_segments: Vec<&str> = relative.split('/').collect();
    let mut allowed = Vec::new();
    let mut best_literals = None;
    for compiled in compiled_routes() {
        let Some(params) = match_segments(&compiled.segments, &path_segments) else {
            continue;
        };
        // Only the most specific matching pattern's methods count.
        if best_literals.is_some_and(|best| compiled.literals < best) {
            break;
        }
        best_literals = Some(compiled.literals);
        if compiled.route.method.eq_ignore_ascii_case(method) {
            return Resolution::Found {
                id: compiled.route.id,
                params,
            };
        }
        allowed.push(compiled.route.method);
    }
    if allowed.is_empty() {
        Resolution::NotFound
    } else {
        Resolution::MethodNotAllowed { allowed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: &str, path: &str) -> (RouteId, Vec<(&'static str, String)>) {
        match resolve(method, path) {
            Resolution::Found { id, params } => (id, params),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn literal_segments_win_over_parameters() {
        assert_eq!(
            found("POST", "/v1/integrations/stripe/subscription-events").0,
            RouteId::StripeWebhook
        );
        assert_eq!(
            found("POST", "/v1/integrations/paddle/events"),
            (RouteId::SourceWebhook, vec![("source", "paddle".into())])
        );
        assert_eq!(
            found("GET", "/v1/admin/merchants/acme/api-keys").0,
            RouteId::AdminListApiKeys
        );
        assert_eq!(
            found("PUT", "/v1/admin/merchants/acme/pixel").0,
            RouteId::AdminPutPixel
        );
        assert_eq!(
            found("OPTIONS", "/v1/pixel/tlp_00/collect"),
            (
                RouteId::PixelPreflight,
                vec![("pixel_key", "tlp_00".into())]
            )
        );
        assert_eq!(
            found("GET", "/v1/admin/merchants/acme/deliveries"),
            (
                RouteId::AdminView,
                vec![
                    ("merchant_id", "acme".into()),
                    ("view", "deliveries".into())
                ]
            )
        );
        assert_eq!(
            found("PUT", "/v1/admin/merchants/acme/sources/stripe").0,
            RouteId::AdminPutIntegration
        );
    }

    #[test]
    fn wrong_methods_and_unknown_paths_are_told_apart() {
        assert_eq!(
            resolve("DELETE", "/v1/admin/merchants"),
            Resolution::MethodNotAllowed {
                allowed: vec!["GET", "POST"]
            }
        );
        assert_eq!(resolve("GET", "/v1/nothing"), Resolution::NotFound);
        assert_eq!(
            resolve("GET", "/v1/admin/merchants//x"),
            Resolution::NotFound
        );
    }

    /// `DELETE …/api-keys/..` answered 200 and deleted the merchant: a URL parser
    /// resolved it to `/v1/admin/merchants/m1/` and the router trimmed the slash.
    #[test]
    fn dot_and_empty_segments_are_refused_before_routing() {
        for raw in [
            "/v1/admin/merchants/m1/api-keys/..",
            "/v1/admin/merchants/m1/api-keys/%2e%2e",
            "/v1/admin/merchants/m1/api-keys/%2E%2e",
            "/v1/admin/merchants/m1/sources/..",
            "/v1/admin/merchants/m1/pixel/..",
            "/v1/admin/merchants/m1/./pixel",
            "/v1/admin/merchants/m1/.%2e/m2",
        ] {
            assert_eq!(check_raw_path(raw), Err(PathError::DotSegment), "{raw}");
        }
        for raw in ["/v1/admin/merchants/m1/", "/v1//admin/merchants", "//v1"] {
            assert_eq!(check_raw_path(raw), Err(PathError::EmptySegment), "{raw}");
        }
        assert_eq!(
            check_raw_path("/v1/admin/merchants/m1/api-keys/k.1"),
            Ok(())
        );
        assert_eq!(check_raw_path("/"), Ok(()));
        // What the normalised forms route to: nothing, not the merchant.
        assert_eq!(
            resolve("DELETE", "/v1/admin/merchants/m1/"),
            Resolution::NotFound
        );
        assert_eq!(
            resolve("DELETE", "/v1/admin/merchants/m1/api-keys/.."),
            Resolution::NotFound
        );
    }

    #[test]
    fn the_raw_path_is_taken_without_decoding() {
        assert_eq!(
            raw_path_of("http://127.0.0.1:8787/v1/admin/merchants/m1/api-keys/%2e%2e?x=1"),
            "/v1/admin/merchants/m1/api-keys/%2e%2e"
        );
        assert_eq!(raw_path_of("https://h.example"), "/");
        assert_eq!(raw_path_of("https://h.example/a#f"), "/a");
    }
}
