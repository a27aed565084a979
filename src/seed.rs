//! The daily LinkedIn seed sync: high-intent visitors with a known email go into a DMP
//! segment of the merchant's ad account (Matched Audiences), as SHA-256 of the
//! normalised email. The requests are built here; the edge sends them.
//!
//! LinkedIn (learn.microsoft.com/linkedin/marketing/matched-audiences):
//! `POST /rest/dmpSegments` creates a segment (its id comes back in `x-restli-id`; wait
//! 5 s before adding users); `POST /rest/dmpSegments/{id}/users` with
//! `X-RestLi-Method: BATCH_CREATE` adds up to 5,000 users, each `{action: "ADD",
//! userIds: [{idType: "SHA256_EMAIL", idValue}]}`, and answers one status per element;
//! `GET /rest/dmpSegments/{id}` reports `matchedCount` and `status`. A segment serves
//! from 300 matched members. Every call carries the pinned `LinkedIn-Version` and the
//! merchant's OAuth token, which needs the `rw_dmp_segments` permission.

use crate::destinations::linkedin::{LinkedInConfig, API};
use crate::destinations::{Endpoints, OutboundRequest};
use crate::intent::{urn_id, SeedSettings};
use crate::intent_store::SeedCandidate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// LinkedIn's batch limit for segment users.
pub const MAX_USERS_PER_REQUEST: usize = 5000;
/// What LinkedIn needs before an audience serves.
pub const MIN_SERVING_AUDIENCE: i64 = 300;
/// How long LinkedIn asks to wait after creating a segment before adding users.
pub const WAIT_AFTER_CREATE_MS: u64 = 5_000;

const SEGMENT_URN: &str = "urn:li:dmpSegment:";

/// A background task on the tasks queue: one message per merchant, so a cron run
/// never does every merchant's work in one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "task")]
pub enum Task {
    SeedSync {
        merchant_id: String,
        /// The UTC day the run is for (`YYYY-MM-DD`).
        day: String,
        /// `cron` or `manual`.
        trigger: String,
    },
}

/// What the upload uses: the merchant's LinkedIn destination's token and version.
pub struct SeedClient<'a> {
    pub base_url: &'a str,
    pub access_token: &'a str,
    pub version: &'a str,
}

impl<'a> SeedClient<'a> {
    pub fn new(endpoints: &'a Endpoints, config: &'a LinkedInConfig) -> Self {
        SeedClient {
            base_url: endpoints.url(&API),
            access_token: &config.access_token,
            version: &config.linkedin_version,
        }
    }

    fn request(
        &self,
        method: &'static str,
        path: &str,
        body: String,
        batch: bool,
    ) -> OutboundRequest {
        let url = format!("{}{path}", self.base_url);
        let mut headers = vec![
            (
                "Authorization".to_string(),
                format!("Bearer {}", self.access_token),
            ),
            ("LinkedIn-Version".to_string(), self.version.to_string()),
            ("X-Restli-Protocol-Version".to_string(), "2.0.0".to_string()),
        ];
        if method == "POST" {
            headers.push(("Content-Type".to_string(), "application/json".to_string()));
        }
        if batch {
            headers.push(("X-RestLi-Method".to_string(), "BATCH_CREATE".to_string()));
        }
        OutboundRequest {
            method,
            log_url: url.clone(),
            url,
            headers,
            body,
        }
    }

    /// Creates the merchant's seed segment (a user segment fed by API, private).
    pub fn create_segment(&self, seed: &SeedSettings) -> OutboundRequest {
        let body = json!({
            "name": seed.segment_name,
            "account": seed.ad_account,
            "type": "USER",
            "sourcePlatform": "API",
            "destinations": [{ "destination": "LINKEDIN" }],
            "accessPolicy": "PRIVATE",
            "description": "High-intent website visitors, synced daily by TrackLayer",
        });
        self.request("POST", "/rest/dmpSegments", body.to_string(), false)
    }

    /// One request per 5,000 users: every email of every candidate, added.
    pub fn add_users(
        &self,
        segment: &str,
        candidates: &[SeedCandidate],
    ) -> Vec<(OutboundRequest, Vec<usize>)> {
        let id = segment_id(segment);
        let elements: Vec<(usize, Value)> = candidates
            .iter()
            .enumerate()
            .flat_map(|(index, candidate)| {
                candidate.email_sha256.iter().map(move |hash| {
                    (
                        index,
                        json!({
                            "action": "ADD",
                            "userIds": [{ "idType": "SHA256_EMAIL", "idValue": hash }],
                        }),
                    )
                })
            })
            .collect();
        elements
            .chunks(MAX_USERS_PER_REQUEST)
            .map(|chunk| {
                let body = json!({ "elements": chunk.iter().map(|(_, e)| e).collect::<Vec<_>>() });
                let owners = chunk.iter().map(|(i, _)| *i).collect();
                (
                    self.request(
                        "POST",
                        &format!("/rest/dmpSegments/{id}/users"),
                        body.to_string(),
                        true,
                    ),
                    owners,
                )
            })
            .collect()
    }

    pub fn get_segment(&self, segment: &str) -> OutboundRequest {
        self.request(
            "GET",
            &format!("/rest/dmpSegments/{}", segment_id(segment)),
            String::new(),
            false,
        )
    }
}

fn segment_id(segment: &str) -> &str {
    urn_id(segment, SEGMENT_URN).unwrap_or(segment)
}

/// Why a call failed, and whether a later retry may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFailure {
    pub reason: String,
    pub retryable: bool,
}

/// An HTTP answer that is not a success, as a failure with LinkedIn's message.
pub fn failure(status: u16, body: &str) -> SeedFailure {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let hint = match status {
        401 => " (the LinkedIn token is expired or revoked: reconnect LinkedIn)",
        403 => " (the token needs the rw_dmp_segments permission and a non-viewer role on the ad account)",
        426 => " (LinkedIn-Version is sunset: set a current linkedin_version)",
        _ => "",
    };
    SeedFailure {
        reason: format!("LinkedIn answered HTTP {status}: {message}{hint}"),
        retryable: status == 429 || status >= 500,
    }
}

/// The new segment's URN from the create answer (`x-restli-id`, else `Location`).
pub fn created_segment(
    status: u16,
    restli_id: Option<&str>,
    location: Option<&str>,
    body: &str,
) -> Result<String, SeedFailure> {
    if !(200..300).contains(&status) {
        return Err(failure(status, body));
    }
    let id = restli_id
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .or_else(|| location.and_then(|l| l.trim_end_matches('/').rsplit('/').next()))
        .map(|id| id.trim_start_matches(SEGMENT_URN));
    match id {
        Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(format!("{SEGMENT_URN}{id}"))
        }
        _ => Err(SeedFailure {
            reason: "LinkedIn created the segment but named no id".into(),
            retryable: true,
        }),
    }
}

/// Which of a batch's elements LinkedIn accepted: its answer has one status per
/// element, in order; a 2xx answer without them accepted all.
pub fn accepted_elements(status: u16, body: &str, count: usize) -> Result<Vec<bool>, SeedFailure> {
    if !(200..300).contains(&status) {
        return Err(failure(status, body));
    }
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(elements) = parsed["elements"].as_array() else {
        return Ok(vec![true; count]);
    };
    Ok((0..count)
        .map(|i| {
            elements
                .get(i)
                .and_then(|e| e["status"].as_u64())
                .is_some_and(|s| (200..300).contains(&s))
        })
        .collect())
}

/// The segment's matched members and status from `GET /rest/dmpSegments/{id}`.
pub fn segment_size(body: &str) -> (Option<i64>, Option<String>) {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let destination = parsed["destinations"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["destination"] == "LINKEDIN"));
    let size = parsed["matchedCount"]
        .as_i64()
        .or_else(|| destination.and_then(|d| d["matchedCount"].as_i64()))
        .or_else(|| parsed["audienceSize"].as_i64());
    let status = destination
        .and_then(|d| d["status"].as_str())
        .or_else(|| parsed["status"].as_str())
        .map(str::to_string);
    (size, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LinkedInConfig {
        serde_json::from_value(json!({
            "access_token": "AQV_token",
            "linkedin_version": "202608",
            "conversion_rules": { "subscription_started": "urn:lla:llaPartnerConversion:123" }
        }))
        .unwrap()
    }

    fn candidate(key: &str, hashes: &[&str]) -> SeedCandidate {
        SeedCandidate {
            visitor_key: key.into(),
            email_sha256: hashes.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn users_are_added_as_sha256_emails_in_batches_of_five_thousand() {
        let endpoints = Endpoints::default();
        let config = config();
        let client = SeedClient::new(&endpoints, &config);
        let requests = client.add_users(
            "urn:li:dmpSegment:1234",
            &[
                candidate("visitor:a", &["h1", "h2"]),
                candidate("visitor:b", &["h3"]),
            ],
        );
        assert_eq!(requests.len(), 1);
        let (request, owners) = &requests[0];
        assert_eq!(
            request.url,
            "https://api.linkedin.com/rest/dmpSegments/1234/users"
        );
        assert_eq!(owners, &[0, 0, 1]);
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("X-RestLi-Method"), Some("BATCH_CREATE"));
        assert_eq!(header("LinkedIn-Version"), Some("202608"));
        assert_eq!(header("X-Restli-Protocol-Version"), Some("2.0.0"));
        assert_eq!(header("Authorization"), Some("Bearer AQV_token"));
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(
            body["elements"][0],
            json!({ "action": "ADD", "userIds": [{ "idType": "SHA256_EMAIL", "idValue": "h1" }] })
        );
        let many: Vec<SeedCandidate> = (0..5001)
            .map(|i| candidate(&format!("visitor:{i}"), &["h"]))
            .collect();
        let split = client.add_users("urn:li:dmpSegment:1", &many);
        assert_eq!(split.len(), 2);
        assert_eq!(split[1].1, [5000]);
    }

    #[test]
    fn a_created_segment_is_private_user_segment_and_its_id_is_read_from_the_answer() {
        let endpoints = Endpoints::default();
        let config = config();
        let client = SeedClient::new(&endpoints, &config);
        let seed = SeedSettings {
            ad_account: "urn:li:sponsoredAccount:507404993".into(),
            segment: None,
            create_segment: true,
            segment_name: "High intent".into(),
        };
        let request = client.create_segment(&seed);
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["account"], "urn:li:sponsoredAccount:507404993");
        assert_eq!(body["type"], "USER");
        assert_eq!(body["accessPolicy"], "PRIVATE");
        assert_eq!(
            created_segment(201, Some("9876"), None, "").unwrap(),
            "urn:li:dmpSegment:9876"
        );
        assert_eq!(
            created_segment(
                201,
                None,
                Some("https://api.linkedin.com/rest/dmpSegments/55"),
                ""
            )
            .unwrap(),
            "urn:li:dmpSegment:55"
        );
        assert!(created_segment(201, None, None, "").is_err());
        let refused = created_segment(403, None, None, r#"{"message":"Not enough permissions"}"#)
            .unwrap_err();
        assert!(!refused.retryable);
        assert!(
            refused.reason.contains("rw_dmp_segments"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn element_statuses_and_segment_size_are_read() {
        let body = r#"{"elements":[{"status":201},{"status":400,"message":"bad"}]}"#;
        assert_eq!(accepted_elements(200, body, 2).unwrap(), [true, false]);
        assert_eq!(accepted_elements(200, "", 2).unwrap(), [true, true]);
        assert!(accepted_elements(503, "", 1).unwrap_err().retryable);
        assert!(accepted_elements(429, "", 1).unwrap_err().retryable);
        assert_eq!(
            segment_size(
                r#"{"id":1,"matchedCount":120,"destinations":[{"destination":"LINKEDIN","status":"BUILDING"}]}"#
            ),
            (Some(120), Some("BUILDING".into()))
        );
        assert_eq!(segment_size("{}"), (None, None));
    }
}
