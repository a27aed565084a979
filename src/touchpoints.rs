//! Touchpoints: the click ids, cookies and device data a person can be matched on, as
//! captured by the merchant's app or the first-party pixel. The bottom of the event
//! model: `event` carries them, `identity` reads them against events.

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
            if !is_visitor_id(value) {
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

/// A pixel visitor id as the script makes them: 32 lowercase hex digits.
pub fn is_visitor_id(candidate: &str) -> bool {
    candidate.len() == 32
        && candidate
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
