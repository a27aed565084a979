//! Identity beyond email and customer id: the click ids, cookies and device data captured
//! when a person signs up (by the merchant's app, from its first-party cookies), kept per
//! merchant so that a billing event weeks later still carries them, and the match-quality
//! score of each delivery.

use crate::destinations::MatchKey;
use crate::event::CanonicalEvent;
use serde::{Deserialize, Serialize};

/// Longest value kept for any touchpoint; longer ones are not real click ids.
const MAX_VALUE_CHARS: usize = 512;

/// Everything a destination can match a person on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identifier {
    Email,
    Phone,
    CustomerId,
    Fbp,
    Fbc,
    Gclid,
    Gbraid,
    Wbraid,
    LiFatId,
    Ttclid,
    GaClientId,
    ClientIp,
    UserAgent,
}

impl Identifier {
    pub fn as_str(self) -> &'static str {
        match self {
            Identifier::Email => "email",
            Identifier::Phone => "phone",
            Identifier::CustomerId => "customer_id",
            Identifier::Fbp => "fbp",
            Identifier::Fbc => "fbc",
            Identifier::Gclid => "gclid",
            Identifier::Gbraid => "gbraid",
            Identifier::Wbraid => "wbraid",
            Identifier::LiFatId => "li_fat_id",
            Identifier::Ttclid => "ttclid",
            Identifier::GaClientId => "ga_client_id",
            Identifier::ClientIp => "client_ip",
            Identifier::UserAgent => "user_agent",
        }
    }
}

/// Click ids and device data for one person. Values are kept exactly as captured (click
/// ids are case-sensitive and must never be hashed); hashing is each destination's job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touchpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gclid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbraid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wbraid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub li_fat_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttclid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ga_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The pixel's visitor id (`_tl_vid` cookie), passed by the merchant's server: links
    /// this person to what the pixel captured in their browser. Never sent anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor_id: Option<String>,
    /// When the click ids were captured (unix seconds): attribution windows count from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<i64>,
}

impl Touchpoints {
    /// Nothing at all, not even the visitor id a stored or transferred event keeps.
    pub fn is_unset(&self) -> bool {
        self.is_empty() && self.visitor_id.is_none() && self.captured_at.is_none()
    }

    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }

    fn fields(&self) -> [(Identifier, &Option<String>); 11] {
        [
            (Identifier::Phone, &self.phone),
            (Identifier::Fbp, &self.fbp),
            (Identifier::Fbc, &self.fbc),
            (Identifier::Gclid, &self.gclid),
            (Identifier::Gbraid, &self.gbraid),
            (Identifier::Wbraid, &self.wbraid),
            (Identifier::LiFatId, &self.li_fat_id),
            (Identifier::Ttclid, &self.ttclid),
            (Identifier::GaClientId, &self.ga_client_id),
            (Identifier::ClientIp, &self.client_ip),
            (Identifier::UserAgent, &self.user_agent),
        ]
    }

    fn fields_mut(&mut self) -> [(Identifier, &mut Option<String>); 11] {
        [
            (Identifier::Phone, &mut self.phone),
            (Identifier::Fbp, &mut self.fbp),
            (Identifier::Fbc, &mut self.fbc),
            (Identifier::Gclid, &mut self.gclid),
            (Identifier::Gbraid, &mut self.gbraid),
            (Identifier::Wbraid, &mut self.wbraid),
            (Identifier::LiFatId, &mut self.li_fat_id),
            (Identifier::Ttclid, &mut self.ttclid),
            (Identifier::GaClientId, &mut self.ga_client_id),
            (Identifier::ClientIp, &mut self.client_ip),
            (Identifier::UserAgent, &mut self.user_agent),
        ]
    }

    pub fn get(&self, identifier: Identifier) -> Option<&str> {
        self.fields()
            .into_iter()
            .find(|(id, _)| *id == identifier)
            .and_then(|(_, v)| v.as_deref())
            .filter(|v| !v.is_empty())
    }

    /// Sets one value from its captured form. Accepts the cookie names apps read
    /// (`_fbp`, `_fbc`, `_ga`) as well as ours. Returns false for an unknown name.
    pub fn set(&mut self, name: &str, raw: &str) -> Result<bool, String> {
        let value = raw.trim();
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(format!(
                "{name} is longer than {MAX_VALUE_CHARS} characters"
            ));
        }
        if matches!(name, "visitor_id" | "_tl_vid") {
            if !crate::pixel::is_visitor_id(value) {
                return Err(format!(
                    "{name} is not a TrackLayer visitor id (32 lowercase hex digits)"
                ));
            }
            self.visitor_id = Some(value.to_string());
            return Ok(true);
        }
        let (identifier, value) = match name {
            "_ga" => (
                Identifier::GaClientId,
                ga_client_id_from_cookie(value).ok_or_else(|| {
                    "_ga is not a Google Analytics cookie (GA1.1.<id>.<time>)".to_string()
                })?,
            ),
            "_fbp" => (Identifier::Fbp, value.to_string()),
            "_fbc" => (Identifier::Fbc, value.to_string()),
            "ip" => (Identifier::ClientIp, value.to_string()),
            other => match self
                .fields()
                .iter()
                .find(|(id, _)| id.as_str() == other)
                .map(|(id, _)| *id)
            {
                Some(id) => (id, value.to_string()),
                None => return Ok(false),
            },
        };
        if value.is_empty() {
            return Ok(true);
        }
        for (id, slot) in self.fields_mut() {
            if id == identifier {
                *slot = Some(value);
                break;
            }
        }
        Ok(true)
    }

    /// Fills what this event lacks from what was captured earlier; the event's own
    /// values win (a fresher click is a better click).
    pub fn fill_from(&mut self, stored: &Touchpoints) {
        let stored_fields = stored.fields();
        let mut filled = false;
        for ((_, slot), (_, stored_value)) in self.fields_mut().into_iter().zip(stored_fields) {
            if slot.as_deref().is_none_or(str::is_empty) {
                if let Some(value) = stored_value.clone().filter(|v| !v.is_empty()) {
                    *slot = Some(value);
                    filled = true;
                }
            }
        }
        if filled && self.captured_at.is_none() {
            self.captured_at = stored.captured_at;
        }
    }

    /// The values worth storing: what the event captured, without the visitor link.
    pub fn for_store(&self) -> Touchpoints {
        Touchpoints {
            visitor_id: None,
            ..self.clone()
        }
    }
}

/// One record per identity key, freshest capture first → one set of touchpoints: each
/// value comes from the freshest record that has it.
pub fn merge_freshest_first<'a>(
    records: impl IntoIterator<Item = &'a Touchpoints>,
) -> Option<Touchpoints> {
    let mut merged: Option<Touchpoints> = None;
    for record in records {
        match &mut merged {
            None => merged = Some(record.clone()),
            Some(fresher) => fresher.fill_from(record),
        }
    }
    merged
}

/// `_ga` cookie `GA1.1.1234567890.1700000000` → client id `1234567890.1700000000`.
pub fn ga_client_id_from_cookie(cookie: &str) -> Option<String> {
    let parts: Vec<&str> = cookie.trim().split('.').collect();
    match parts.as_slice() {
        [version, _, id, time] if version.starts_with("GA") => {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (digits(id) && digits(time)).then(|| format!("{id}.{time}"))
        }
        // Already a client id.
        [id, time]
            if id.bytes().all(|b| b.is_ascii_digit())
                && time.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(cookie.trim().to_string())
        }
        _ => None,
    }
}

/// Identity-store keys a person can be found by: customer id (any source) and email.
pub fn keys(event: &CanonicalEvent) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(id) = event.customer.id() {
        keys.push(customer_key(id));
    }
    if let Some(email) = event
        .customer
        .email
        .as_deref()
        .and_then(crate::hashing::normalize_email)
    {
        keys.push(email_key(&email));
    }
    keys
}

pub fn customer_key(customer_id: &str) -> String {
    format!("customer:{}", customer_id.trim())
}

pub fn email_key(email: &str) -> String {
    format!("email:{}", email.trim().to_lowercase())
}

/// Whether the event carries this identifier (non-empty).
pub fn has(event: &CanonicalEvent, identifier: Identifier) -> bool {
    match identifier {
        Identifier::Email => event
            .customer
            .email
            .as_deref()
            .and_then(crate::hashing::normalize_email)
            .is_some(),
        Identifier::CustomerId => event.customer.id().is_some(),
        other => event.touchpoints.get(other).is_some(),
    }
}

/// Which identifiers a delivery could match on, and a 0–100 score weighted by how much
/// each helps that platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchQuality {
    pub score: u8,
    pub present: Vec<Identifier>,
}

impl MatchQuality {
    pub fn keys(&self) -> String {
        self.present
            .iter()
            .map(|id| id.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub fn match_quality(event: &CanonicalEvent, keys: &[MatchKey]) -> MatchQuality {
    let total: u32 = keys.iter().map(|k| u32::from(k.weight)).sum();
    let present: Vec<&MatchKey> = keys.iter().filter(|k| has(event, k.identifier)).collect();
    let got: u32 = present.iter().map(|k| u32::from(k.weight)).sum();
    let score = (got * 100 + total / 2)
        .checked_div(total)
        .map_or(0, |s| s.min(100) as u8);
    MatchQuality {
        score,
        present: present.iter().map(|k| k.identifier).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ga_cookie_becomes_client_id() {
        assert_eq!(
            ga_client_id_from_cookie("GA1.1.1234567890.1700000000").as_deref(),
            Some("1234567890.1700000000")
        );
        assert_eq!(
            ga_client_id_from_cookie("1234567890.1700000000").as_deref(),
            Some("1234567890.1700000000")
        );
        assert_eq!(ga_client_id_from_cookie("GA1.1.abc.1700"), None);
        assert_eq!(ga_client_id_from_cookie(""), None);
    }

    #[test]
    fn set_accepts_cookie_names_and_refuses_oversized_values() {
        let mut t = Touchpoints::default();
        assert_eq!(t.set("_fbc", " fb.1.1554763741205.AbCdEf "), Ok(true));
        assert_eq!(t.set("_ga", "GA1.2.111.222"), Ok(true));
        assert_eq!(t.set("gclid", "Cj0KCQ"), Ok(true));
        assert_eq!(t.set("plan", "pro"), Ok(false));
        assert!(t.set("ttclid", &"x".repeat(600)).is_err());
        assert_eq!(t.fbc.as_deref(), Some("fb.1.1554763741205.AbCdEf"));
        assert_eq!(t.ga_client_id.as_deref(), Some("111.222"));
        assert_eq!(t.get(Identifier::Gclid), Some("Cj0KCQ"));
        // An empty value sets nothing.
        assert_eq!(t.set("fbp", "  "), Ok(true));
        assert_eq!(t.fbp, None);
    }

    #[test]
    fn event_values_win_over_stored_ones() {
        let mut event = Touchpoints {
            gclid: Some("new".into()),
            ..Default::default()
        };
        let stored = Touchpoints {
            gclid: Some("old".into()),
            fbc: Some("fb.1.1.x".into()),
            captured_at: Some(100),
            ..Default::default()
        };
        event.fill_from(&stored);
        assert_eq!(event.gclid.as_deref(), Some("new"));
        assert_eq!(event.fbc.as_deref(), Some("fb.1.1.x"));
        assert_eq!(event.captured_at, Some(100));

        let newer = Touchpoints {
            ttclid: Some("tt".into()),
            captured_at: Some(200),
            ..Default::default()
        };
        let merged = merge_freshest_first([&newer, &stored]).unwrap();
        assert_eq!(merged.gclid.as_deref(), Some("old"));
        assert_eq!(merged.ttclid.as_deref(), Some("tt"));
        assert_eq!(merged.captured_at, Some(200));
    }

    #[test]
    fn freshest_record_wins_per_field() {
        let fresh = Touchpoints {
            gclid: Some("new".into()),
            captured_at: Some(200),
            ..Default::default()
        };
        let old = Touchpoints {
            gclid: Some("old".into()),
            fbp: Some("fb.1.1.1".into()),
            captured_at: Some(100),
            ..Default::default()
        };
        let merged = merge_freshest_first([&fresh, &old]).unwrap();
        assert_eq!(merged.gclid.as_deref(), Some("new"));
        assert_eq!(merged.fbp.as_deref(), Some("fb.1.1.1"));
        assert_eq!(merged.captured_at, Some(200));
        assert_eq!(merge_freshest_first([]), None);
    }

    #[test]
    fn match_score_weights_present_identifiers() {
        let keys = [
            MatchKey {
                identifier: Identifier::Email,
                weight: 5,
            },
            MatchKey {
                identifier: Identifier::Fbc,
                weight: 4,
            },
            MatchKey {
                identifier: Identifier::CustomerId,
                weight: 1,
            },
        ];
        let mut event = crate::event::tests_support::event();
        event.customer.email = Some("ann@example.com".into());
        event.customer.customer_id = None;
        let q = match_quality(&event, &keys);
        assert_eq!(q.score, 50);
        assert_eq!(q.keys(), "email");
        event.touchpoints.fbc = Some("fb.1.1.x".into());
        event.customer.customer_id = Some("cus_1".into());
        assert_eq!(match_quality(&event, &keys).score, 100);
        event.customer.email = Some("not an email".into());
        assert_eq!(match_quality(&event, &keys).score, 50);
        assert_eq!(match_quality(&event, &[]).score, 0);
    }
}
