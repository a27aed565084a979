//! The merchant's pages, rendered on the server: sign-in, the intent overview (visitors
//! by score, the high-intent queue, the LinkedIn seed sync) and one visitor's timeline.
//! Plain HTML that reads without JavaScript; the one small script only shows times in
//! the reader's zone. No third-party assets: the edge serves them with a strict CSP.

use crate::intent::Rule;
use crate::intent_store::{SeedRun, SeedRunStatus, Timeline, TimelineEntry, VisitorSummary};
use serde_json::Value;
use std::fmt::Write;

pub const STYLES: &str = include_str!("pages/app.css");
pub const SCRIPT: &str = include_str!("pages/app.js");

/// Every page's Content-Security-Policy: own styles and script only, nothing framed,
/// forms post only to us.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A time as UTC text in a `<time>` the script may show in local time.
fn time(at_ms: i64) -> String {
    let iso = crate::time::utc_rfc3339(at_ms.div_euclid(1000));
    let text = iso.replacen('T', " ", 1).trim_end_matches('Z').to_string();
    let text = text.get(..16).unwrap_or(&text).to_string();
    format!("<time datetime=\"{iso}\">{text} UTC</time>")
}

fn score(value: f64) -> String {
    if (value - value.round()).abs() < 0.005 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn layout(title: &str, merchant_id: Option<&str>, body: &str) -> String {
    let mut header = String::from("<header><a class=\"brand\" href=\"/app\">TrackLayer</a>");
    if let Some(merchant) = merchant_id {
        let _ = write!(
            header,
            "<nav><a href=\"/app\">Intent</a><a href=\"/app/health\">Health</a></nav>\
             <span class=\"merchant\">{}</span><form method=\"post\" action=\"/app/sign-out\"><button type=\"submit\">Sign out</button></form>",
            escape(merchant)
        );
    }
    header.push_str("</header>");
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · TrackLayer</title>\
         <link rel=\"stylesheet\" href=\"/app/assets/app.css\">\
         <script src=\"/app/assets/app.js\" defer></script></head>\
         <body>{header}<main>{body}</main></body></html>\n",
        escape(title)
    )
}

/// The sign-in form; `error` says why the last attempt failed.
pub fn sign_in(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    layout(
        "Sign in",
        None,
        &format!(
            "<section class=\"signin\"><h1>Sign in</h1>\
             <p>Use one of your workspace's API keys (<code>tlk_…</code>). The page keeps you signed in for 8 hours.</p>\
             {error}\
             <form method=\"post\" action=\"/app/session\">\
             <label for=\"api_key\">API key</label>\
             <input id=\"api_key\" name=\"api_key\" type=\"password\" autocomplete=\"off\" required>\
             <button type=\"submit\">Sign in</button></form></section>"
        ),
    )
}

fn who(visitor: &VisitorSummary) -> String {
    let id = format!(
        "<a href=\"/app/visitors/{0}\"><code>{1}</code></a>",
        escape(&visitor.visitor_id),
        escape(visitor.visitor_id.get(..8).unwrap_or(&visitor.visitor_id))
    );
    match visitor.emails.first() {
        Some(email) => format!("{id} <span class=\"email\">{}</span>", escape(email)),
        None => format!("{id} <span class=\"muted\">anonymous</span>"),
    }
}

fn rule_label(rule: Option<Rule>) -> String {
    rule.map(|r| escape(r.label())).unwrap_or_default()
}

/// What the overview page shows.
pub struct OverviewPage<'a> {
    pub merchant_id: &'a str,
    pub threshold: u32,
    pub ranked: &'a [VisitorSummary],
    pub queue: &'a [VisitorSummary],
    pub seed_included: bool,
    pub seed_configured: bool,
    pub segment: Option<&'a str>,
    pub uploaded_visitors: i64,
    pub runs: &'a [SeedRun],
}

pub fn overview(page: &OverviewPage) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Visitor intent</h1><p class=\"lead\">Visitors enter the high-intent queue at <strong>{}</strong> points.</p>",
        page.threshold
    );

    body.push_str("<section><h2>Visitors by score</h2>");
    if page.ranked.is_empty() {
        body.push_str("<p class=\"muted\">No visitor has scored yet. Scores come from the pixel's page views and form events.</p>");
    } else {
        body.push_str(
            "<table class=\"list\" id=\"ranked\"><thead><tr><th>#</th><th>Visitor</th><th>Score</th><th>Pages</th><th>Last seen</th><th>Queue</th></tr></thead><tbody>",
        );
        for (rank, visitor) in page.ranked.iter().enumerate() {
            let queued = if visitor.qualified_at.is_some() {
                "<span class=\"badge hot\">high intent</span>"
            } else {
                ""
            };
            let _ = write!(
                body,
                "<tr><td data-label=\"#\">{}</td><td data-label=\"Visitor\">{}</td><td data-label=\"Score\" class=\"num\">{}</td>\
                 <td data-label=\"Pages\" class=\"num\">{}</td><td data-label=\"Last seen\">{}</td><td data-label=\"Queue\">{queued}</td></tr>",
                rank + 1,
                who(visitor),
                score(visitor.score),
                visitor.page_views,
                time(visitor.last_seen)
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section>");

    body.push_str("<section><h2>High-intent queue</h2>");
    if page.queue.is_empty() {
        body.push_str("<p class=\"muted\">Nobody has crossed the threshold yet.</p>");
    } else {
        body.push_str(
            "<table class=\"list\" id=\"queue\"><thead><tr><th>Qualified</th><th>Visitor</th><th>Crossed with</th><th>Score now</th></tr></thead><tbody>",
        );
        for visitor in page.queue {
            let _ = write!(
                body,
                "<tr><td data-label=\"Qualified\">{}</td><td data-label=\"Visitor\">{}</td><td data-label=\"Crossed with\">{}</td><td data-label=\"Score now\" class=\"num\">{}</td></tr>",
                visitor.qualified_at.map(time).unwrap_or_default(),
                who(visitor),
                rule_label(visitor.qualified_rule),
                score(visitor.score)
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section>");

    body.push_str("<section id=\"seed\"><h2>LinkedIn seed audience</h2>");
    if !page.seed_included {
        body.push_str("<p class=\"muted\">The daily LinkedIn seed sync is part of the Pro plan and higher. Intent is scored on every plan.</p>");
    } else if !page.seed_configured {
        body.push_str("<p class=\"muted\">No LinkedIn seed is configured. Your operator can name a DMP segment (or let TrackLayer create one).</p>");
    } else {
        let latest = page.runs.iter().find(|r| r.segment_size.is_some());
        let size = latest.and_then(|r| r.segment_size);
        let _ = write!(
            body,
            "<dl class=\"facts\"><dt>Segment</dt><dd><code>{}</code></dd><dt>Visitors uploaded</dt><dd>{}</dd>\
             <dt>Matched on LinkedIn</dt><dd>{}</dd></dl>",
            escape(page.segment.unwrap_or("created on the first upload")),
            page.uploaded_visitors,
            size.map_or("not reported yet".to_string(), |n| n.to_string())
        );
        if size.is_none_or(|n| n < crate::seed::MIN_SERVING_AUDIENCE) {
            let _ = write!(
                body,
                "<p class=\"note\">LinkedIn serves an audience once it has at least {} matched members; until then campaigns using it will not run.</p>",
                crate::seed::MIN_SERVING_AUDIENCE
            );
        }
        body.push_str("<p class=\"muted\">Synced every day at 09:00 UTC: newly qualified visitors with a known email, as SHA-256 hashes.</p>");
    }
    if !page.runs.is_empty() {
        body.push_str(
            "<table class=\"list\" id=\"runs\"><thead><tr><th>Run</th><th>Trigger</th><th>Status</th><th>Uploaded</th><th>No email</th><th>Failed</th><th>Note</th></tr></thead><tbody>",
        );
        for run in page.runs {
            let status = match run.status {
                SeedRunStatus::Succeeded => "succeeded",
                SeedRunStatus::Failed => "failed",
                SeedRunStatus::PlanRequired => "plan required",
                SeedRunStatus::NotConnected => "LinkedIn not connected",
            };
            let _ = write!(
                body,
                "<tr><td data-label=\"Run\">{}</td><td data-label=\"Trigger\">{}</td><td data-label=\"Status\">{}</td>\
                 <td data-label=\"Uploaded\" class=\"num\">{}</td><td data-label=\"No email\" class=\"num\">{}</td>\
                 <td data-label=\"Failed\" class=\"num\">{}</td><td data-label=\"Note\">{}</td></tr>",
                time(run.started_at),
                escape(&run.trigger),
                status,
                run.uploaded,
                run.skipped_without_email,
                run.failed,
                escape(run.error.as_deref().unwrap_or(""))
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section>");
    layout("Visitor intent", Some(page.merchant_id), &body)
}

fn values_text(values: &Value) -> String {
    let currency = values["currency"].as_str().unwrap_or("");
    let amount = |name: &str| match &values[name] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    [
        ("mrr", "MRR"),
        ("arr", "ARR"),
        ("net_value", "net"),
        ("mrr_delta", "MRR change"),
    ]
    .iter()
    .filter_map(|(field, label)| amount(field).map(|v| format!("{label} {v} {currency}")))
    .collect::<Vec<_>>()
    .join(", ")
}

fn entry(entry: &TimelineEntry) -> (String, &'static str, String) {
    match entry {
        TimelineEntry::PageView { at_ms, path, title } => (
            time(*at_ms),
            "view",
            format!(
                "Viewed <code>{}</code>{}",
                escape(path),
                title
                    .as_deref()
                    .map(|t| format!(" <span class=\"muted\">{}</span>", escape(t)))
                    .unwrap_or_default()
            ),
        ),
        TimelineEntry::FormStart { at_ms, form, path } => (
            time(*at_ms),
            "form",
            format!(
                "Started the <strong>{}</strong> form{}",
                escape(form),
                path.as_deref()
                    .map(|p| format!(" on <code>{}</code>", escape(p)))
                    .unwrap_or_default()
            ),
        ),
        TimelineEntry::FormSubmit { at_ms, form, .. } => (
            time(*at_ms),
            "form",
            format!("Submitted the <strong>{}</strong> form", escape(form)),
        ),
        TimelineEntry::Signal {
            at_ms,
            label,
            points,
            score_after,
            path,
            ..
        } => (
            time(*at_ms),
            "signal",
            format!(
                "<strong>+{points}</strong> {}{} <span class=\"muted\">score {}</span>",
                escape(label),
                path.as_deref()
                    .map(|p| format!(" (<code>{}</code>)", escape(p)))
                    .unwrap_or_default(),
                score(*score_after)
            ),
        ),
        TimelineEntry::Qualified {
            at_ms,
            rule,
            score: s,
        } => (
            time(*at_ms),
            "hot",
            format!(
                "Entered the high-intent queue at {} points ({})",
                score(*s),
                escape(rule.label())
            ),
        ),
        TimelineEntry::Identify { at_ms, identity } => {
            let (kind, value) = identity.split_once(':').unwrap_or(("id", identity));
            let kind = if kind == "customer" {
                "customer id"
            } else {
                kind
            };
            (
                time(*at_ms),
                "identify",
                format!("Identified by {kind} <strong>{}</strong>", escape(value)),
            )
        }
        TimelineEntry::Conversion {
            at_ms,
            name,
            source,
            values,
            ..
        } => (
            time(*at_ms),
            "conversion",
            format!(
                "<strong>{}</strong> from {}{}",
                escape(name),
                escape(source),
                match values_text(values) {
                    text if text.is_empty() => String::new(),
                    text => format!(" <span class=\"muted\">{}</span>", escape(&text)),
                }
            ),
        ),
    }
}

pub fn visitor(merchant_id: &str, timeline: &Timeline) -> String {
    let visitor = &timeline.visitor;
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/app\">← All visitors</a></p><h1>Visitor <code>{}</code></h1>\
         <dl class=\"facts\"><dt>Score now</dt><dd id=\"score\">{}</dd><dt>Known as</dt><dd>{}</dd>\
         <dt>First seen</dt><dd>{}</dd><dt>High intent</dt><dd>{}</dd></dl>",
        escape(&visitor.visitor_id),
        score(visitor.score),
        if visitor.emails.is_empty() {
            "<span class=\"muted\">anonymous</span>".to_string()
        } else {
            visitor
                .emails
                .iter()
                .map(|e| escape(e))
                .collect::<Vec<_>>()
                .join(", ")
        },
        time(visitor.first_seen),
        match visitor.qualified_at {
            Some(at) => format!("{} ({})", time(at), rule_label(visitor.qualified_rule)),
            None => "not yet".into(),
        }
    );
    body.push_str("<h2>Timeline</h2><ol class=\"timeline\" id=\"timeline\">");
    for item in &timeline.entries {
        let (when, class, text) = entry(item);
        let _ = write!(body, "<li class=\"{class}\">{when}<p>{text}</p></li>");
    }
    body.push_str("</ol>");
    layout(
        &format!("Visitor {}", visitor.visitor_id),
        Some(merchant_id),
        &body,
    )
}

fn ms(value: Option<i64>) -> String {
    match value {
        Some(ms) if ms >= 1_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms} ms"),
        None => "–".into(),
    }
}

/// The delivery health page: figures per destination, paused destinations (with a
/// resume button), incidents, and the RFM segments with the subscribers' LTV.
pub fn health(
    merchant_id: &str,
    overview: &crate::ops_store::HealthOverview,
    rfm: &serde_json::Value,
) -> String {
    let mut body = String::from("<h1>Delivery health</h1>");
    if !overview.paused.is_empty() {
        body.push_str("<section id=\"paused\"><h2>Paused</h2>");
        for paused in &overview.paused {
            let _ = write!(
                body,
                "<div class=\"note\"><p><strong>{}</strong> paused since {}: {} conversions held, not sent and not lost.</p>\
                 <form method=\"post\" action=\"/app/health/resume\"><input type=\"hidden\" name=\"destination\" value=\"{0}\">\
                 <button type=\"submit\">Resume {0}</button></form></div>",
                escape(&paused.destination),
                time(paused.paused_since),
                paused.held
            );
        }
        body.push_str("</section>");
    }
    body.push_str("<section><h2>Destinations</h2>");
    if overview.destinations.is_empty() {
        body.push_str("<p class=\"muted\">No deliveries in the last 7 days.</p>");
    } else {
        body.push_str(
            "<table class=\"list\" id=\"destinations\"><thead><tr><th>Destination</th><th>Window</th><th>Planned</th><th>Delivered</th>\
             <th>Retried</th><th>Dead-lettered</th><th>Skipped</th><th>p50</th><th>p95</th><th>Match</th></tr></thead><tbody>",
        );
        for (name, figures) in &overview.destinations {
            for (label, w) in [
                ("last hour", &figures.last_hour),
                ("last day", &figures.last_day),
                ("7 days", &figures.last_7_days),
            ] {
                let _ = write!(
                    body,
                    "<tr><td data-label=\"Destination\">{}</td><td data-label=\"Window\">{label}</td>\
                     <td data-label=\"Planned\" class=\"num\">{}</td><td data-label=\"Delivered\" class=\"num\">{}</td>\
                     <td data-label=\"Retried\" class=\"num\">{}</td><td data-label=\"Dead-lettered\" class=\"num\">{}</td>\
                     <td data-label=\"Skipped\" class=\"num\">{}</td><td data-label=\"p50\" class=\"num\">{}</td>\
                     <td data-label=\"p95\" class=\"num\">{}</td><td data-label=\"Match\" class=\"num\">{}</td></tr>",
                    escape(name),
                    w.planned,
                    w.delivered,
                    w.retried,
                    w.dead_lettered,
                    w.skipped,
                    ms(w.latency_p50_ms),
                    ms(w.latency_p95_ms),
                    w.match_score.map_or("–".into(), |s| format!("{s:.0}")),
                );
            }
            let _ = write!(
                body,
                "<tr class=\"sub\"><td colspan=\"10\">Last success {}; last error {}</td></tr>",
                figures
                    .last_success_at
                    .map(time)
                    .unwrap_or_else(|| "never".into()),
                match (&figures.last_error_at, &figures.last_error) {
                    (Some(at), Some(error)) => format!("{} ({})", time(*at), escape(error)),
                    (Some(at), None) => time(*at),
                    _ => "none".into(),
                }
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section><section><h2>Incidents</h2>");
    if overview.incidents.is_empty() {
        body.push_str("<p class=\"muted\">No anomaly so far.</p>");
    } else {
        body.push_str("<table class=\"list\" id=\"incidents\"><thead><tr><th>Opened</th><th>What</th><th>Status</th></tr></thead><tbody>");
        for incident in &overview.incidents {
            let status = match (&incident.resolved_at, &incident.resolved_by) {
                (Some(at), Some(by)) => format!("resolved {} by {}", time(*at), escape(by)),
                _ if incident.paused => "open: destination paused".into(),
                _ => "open".into(),
            };
            let _ = write!(
                body,
                "<tr><td data-label=\"Opened\">{}</td><td data-label=\"What\">{}</td><td data-label=\"Status\">{status}</td></tr>",
                time(incident.opened_at),
                escape(&incident.summary)
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section>");
    body.push_str(&rfm_section(rfm));
    layout("Delivery health", Some(merchant_id), &body)
}

fn rfm_section(rfm: &serde_json::Value) -> String {
    let mut body = String::from("<section id=\"rfm\"><h2>Subscribers: RFM segments and LTV</h2>");
    let Some(at) = rfm["computed_at"].as_i64() else {
        body.push_str("<p class=\"muted\">Not computed yet: the daily job scores subscribers at 09:00 UTC.</p></section>");
        return body;
    };
    let _ = write!(body, "<p class=\"muted\">Computed {}.", time(at));
    if rfm["carry_on_events"] == serde_json::json!(true) {
        body.push_str(" Segments and predicted LTV ride on outbound events.");
    }
    body.push_str("</p><dl class=\"facts\" id=\"segments\">");
    for (segment, count) in rfm["segments"].as_object().into_iter().flatten() {
        let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", escape(segment), count);
    }
    body.push_str("</dl><table class=\"list\" id=\"subscribers\"><thead><tr><th>Subscriber</th><th>Segment</th><th>R F M</th>\
        <th>Last paid</th><th>Paid periods</th><th>Net revenue</th><th>Predicted LTV</th></tr></thead><tbody>");
    for subscriber in rfm["subscribers"].as_array().into_iter().flatten() {
        let monetary = subscriber["monetary"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(currency, amount)| format!("{} {}", amount, currency.to_uppercase()))
            .collect::<Vec<_>>()
            .join(", ");
        let ltv = &subscriber["ltv"];
        let ltv_text = match ltv["predicted_ltv"].as_f64() {
            Some(value) => format!(
                "{value:.2} {} <span class=\"muted\">({} per period × {} months; churn {:.1} %/month, cohort {} of {})</span>",
                escape(&ltv["currency"].as_str().unwrap_or_default().to_uppercase()),
                ltv["arpa"],
                ltv["expected_lifetime_months"],
                ltv["monthly_churn"].as_f64().unwrap_or(0.0) * 100.0,
                escape(ltv["cohort"].as_str().unwrap_or_default()),
                ltv["cohort_size"]
            ),
            None => "–".into(),
        };
        let _ = write!(
            body,
            "<tr><td data-label=\"Subscriber\"><code>{}</code></td><td data-label=\"Segment\">{}</td>\
             <td data-label=\"R F M\">{} {} {}</td><td data-label=\"Last paid\">{}</td>\
             <td data-label=\"Paid periods\" class=\"num\">{}</td><td data-label=\"Net revenue\">{}</td>\
             <td data-label=\"Predicted LTV\">{ltv_text}</td></tr>",
            escape(subscriber["key"].as_str().unwrap_or_default()),
            escape(subscriber["segment"].as_str().unwrap_or_default()),
            subscriber["r"],
            subscriber["f"],
            subscriber["m"],
            subscriber["recency_days"]
                .as_i64()
                .map_or("never".to_string(), |d| format!("{d} days ago")),
            subscriber["frequency"],
            escape(&monetary),
        );
    }
    body.push_str("</tbody></table></section>");
    body
}

/// A page for an error the reader can act on (not found, sign in again).
pub fn message(merchant_id: Option<&str>, title: &str, text: &str) -> String {
    layout(
        title,
        merchant_id,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/app\">Back to the overview</a></p>",
            escape(title),
            escape(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, email: Option<&str>) -> VisitorSummary {
        VisitorSummary {
            visitor_id: id.into(),
            score: 20.0,
            first_seen: 1_780_000_000_000,
            last_seen: 1_780_000_600_000,
            page_views: 6,
            qualified_at: Some(1_780_000_300_000),
            qualified_rule: Some(Rule::DemoFormAbandon),
            emails: email.map(|e| vec![e.to_string()]).unwrap_or_default(),
        }
    }

    #[test]
    fn everything_a_visitor_sent_is_escaped() {
        let hostile = "<script>alert(1)</script>";
        let timeline = Timeline {
            visitor: summary("0123456789abcdef0123456789abcdef", Some("a\"b@example.com")),
            entries: vec![TimelineEntry::PageView {
                at_ms: 1_780_000_000_000,
                path: "/x\"><img src=x>".into(),
                title: Some(hostile.into()),
            }],
        };
        let html = visitor("acme", &timeline);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("a&quot;b@example.com"));
        assert!(
            html.contains("<time datetime=\"2026-05-28T20:26:40Z\">2026-05-28 20:26 UTC</time>")
        );
    }

    #[test]
    fn the_health_page_shows_rfm_with_the_ltv_inputs_escaped() {
        let overview = crate::ops_store::HealthOverview {
            destinations: Default::default(),
            paused: vec![],
            incidents: vec![],
            settings: Default::default(),
        };
        let rfm = serde_json::json!({
            "computed_at": 1_780_000_000_000i64,
            "carry_on_events": true,
            "segments": { "champions": 1 },
            "subscribers": [{
                "key": "customer:<b>", "segment": "champions", "r": 5, "f": 5, "m": 5,
                "recency_days": 2, "frequency": 6, "monetary": { "usd": 294.0 },
                "ltv": { "currency": "usd", "arpa": 49.0, "monthly_churn": 0.0536,
                         "expected_lifetime_months": 18.6, "predicted_ltv": 913.49,
                         "cohort": "2026-06", "cohort_size": 5 }
            }]
        });
        let html = health("acme", &overview, &rfm);
        assert!(html.contains("913.49 USD"), "{html}");
        assert!(
            html.contains("49.0 per period × 18.6 months; churn 5.4 %/month"),
            "{html}"
        );
        assert!(html.contains("customer:&lt;b&gt;"));
        assert!(html.contains("ride on outbound events"));
        let none = health(
            "acme",
            &overview,
            &serde_json::json!({ "computed_at": null }),
        );
        assert!(none.contains("Not computed yet"));
    }

    #[test]
    fn the_overview_explains_the_seed_audience_minimum_and_plan_gate() {
        let ranked = [summary("0123456789abcdef0123456789abcdef", None)];
        let base = OverviewPage {
            merchant_id: "acme",
            threshold: 15,
            ranked: &ranked,
            queue: &ranked,
            seed_included: true,
            seed_configured: true,
            segment: Some("urn:li:dmpSegment:1"),
            uploaded_visitors: 1,
            runs: &[],
        };
        let html = overview(&base);
        assert!(html.contains("at least 300 matched members"));
        assert!(html.contains("high intent"));
        assert!(html.contains("<span class=\"muted\">anonymous</span>"));
        let starter = overview(&OverviewPage {
            seed_included: false,
            ..base
        });
        assert!(starter.contains("part of the Pro plan"));
        assert!(sign_in(Some("That API key is not valid.")).contains("role=\"alert\""));
    }
}
