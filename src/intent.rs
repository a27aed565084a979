//! Visitor intent: what a merchant's pixel sees a visitor do before they talk to sales
//! (pricing, docs, a demo form left half-filled, a competitor comparison, coming back on
//! several days), scored by the merchant's rules into one number per visitor.
//!
//! Everything here is pure: [`VisitorState::observe`] takes one page view or form event
//! and returns the signals it earned; [`VisitorState::expire`] turns demo forms left
//! unsubmitted into abandons once their window has passed. The merchant's object keeps
//! the state, the activity and the signals (`crate::intent_store`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DAY_MS: i64 = 86_400_000;
pub const MAX_PATH_CHARS: usize = 512;
pub const MAX_TITLE_CHARS: usize = 200;
const MAX_PATTERNS: usize = 20;
const MAX_PATTERN_CHARS: usize = 200;
const MAX_POINTS: u32 = 100;
/// Docs pages kept in the state while the deep-dive window is open.
const MAX_RECENT_DOCS: usize = 50;

/// A scoring rule: what earned the points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    PricingPage,
    DocsDeepDive,
    DemoFormAbandon,
    CompetitorPage,
    RepeatVisit,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::PricingPage,
        Rule::DocsDeepDive,
        Rule::DemoFormAbandon,
        Rule::CompetitorPage,
        Rule::RepeatVisit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::PricingPage => "pricing_page",
            Rule::DocsDeepDive => "docs_deep_dive",
            Rule::DemoFormAbandon => "demo_form_abandon",
            Rule::CompetitorPage => "competitor_page",
            Rule::RepeatVisit => "repeat_visit",
        }
    }

    pub fn parse(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// How a person reads it in the timeline.
    pub fn label(self) -> &'static str {
        match self {
            Rule::PricingPage => "Pricing page visit",
            Rule::DocsDeepDive => "Docs deep dive",
            Rule::DemoFormAbandon => "Demo form abandoned",
            Rule::CompetitorPage => "Competitor comparison page",
            Rule::RepeatVisit => "Repeat visit",
        }
    }
}

/// A rule that scores a page view whose path matches one of `paths`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRule {
    pub paths: Vec<String>,
    pub points: u32,
}

/// `distinct_pages` different docs pages within `within_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepDiveRule {
    pub paths: Vec<String>,
    pub points: u32,
    pub distinct_pages: u32,
    pub within_seconds: u32,
}

/// One of `forms` started and not submitted within `abandon_after_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormRule {
    pub forms: Vec<String>,
    pub points: u32,
    pub abandon_after_seconds: u32,
}

/// The `visit_day`-th distinct UTC day with a page view scores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatRule {
    pub points: u32,
    pub visit_day: u32,
}

/// The merchant's rules; a rule left out keeps the product default, a rule given is
/// given whole. Points 0 turn a rule off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default = "default_pricing")]
    pub pricing_page: PageRule,
    #[serde(default = "default_docs")]
    pub docs_deep_dive: DeepDiveRule,
    #[serde(default = "default_demo")]
    pub demo_form_abandon: FormRule,
    #[serde(default = "default_competitor")]
    pub competitor_page: PageRule,
    #[serde(default = "default_repeat")]
    pub repeat_visit: RepeatRule,
}

fn default_pricing() -> PageRule {
    PageRule {
        paths: vec!["/pricing*".into(), "/plans*".into()],
        points: 5,
    }
}

fn default_docs() -> DeepDiveRule {
    DeepDiveRule {
        paths: vec!["/docs/**".into()],
        points: 3,
        distinct_pages: 3,
        within_seconds: 30 * 60,
    }
}

fn default_demo() -> FormRule {
    FormRule {
        forms: vec!["demo".into()],
        points: 8,
        abandon_after_seconds: 30 * 60,
    }
}

fn default_competitor() -> PageRule {
    PageRule {
        paths: vec![
            "/vs/*".into(),
            "/compare/**".into(),
            "/alternatives/**".into(),
        ],
        points: 4,
    }
}

fn default_repeat() -> RepeatRule {
    RepeatRule {
        points: 5,
        visit_day: 3,
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            pricing_page: default_pricing(),
            docs_deep_dive: default_docs(),
            demo_form_abandon: default_demo(),
            competitor_page: default_competitor(),
            repeat_visit: default_repeat(),
        }
    }
}

/// Where the daily seed sync uploads: a DMP segment of the merchant's LinkedIn ad
/// account, named or created by TrackLayer on the first run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSettings {
    /// `urn:li:sponsoredAccount:<id>`.
    pub ad_account: String,
    /// `urn:li:dmpSegment:<id>`; absent with `create_segment` to have one created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(default)]
    pub create_segment: bool,
    #[serde(default = "default_segment_name")]
    pub segment_name: String,
}

fn default_segment_name() -> String {
    "TrackLayer high-intent visitors".into()
}

/// A merchant's intent settings (product defaults from the landing page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentSettings {
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Half-life of a signal's points, in days; absent: points never decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_half_life_days: Option<u32>,
    #[serde(default)]
    pub rules: Rules,
    /// Called (Slack-compatible JSON) when a visitor enters the high-intent queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkedin_seed: Option<SeedSettings>,
}

fn default_threshold() -> u32 {
    15
}

impl Default for IntentSettings {
    fn default() -> Self {
        IntentSettings {
            threshold: default_threshold(),
            decay_half_life_days: None,
            rules: Rules::default(),
            alert_webhook_url: None,
            linkedin_seed: None,
        }
    }
}

impl IntentSettings {
    /// Checks every field; the error names the first bad one.
    pub fn validated(mut self) -> Result<Self, String> {
        if !(1..=10_000).contains(&self.threshold) {
            return Err("threshold: between 1 and 10000 points".into());
        }
        if let Some(days) = self.decay_half_life_days {
            if !(1..=365).contains(&days) {
                return Err("decay_half_life_days: between 1 and 365".into());
            }
        }
        let rules = &mut self.rules;
        check_points("pricing_page", rules.pricing_page.points)?;
        check_points("docs_deep_dive", rules.docs_deep_dive.points)?;
        check_points("demo_form_abandon", rules.demo_form_abandon.points)?;
        check_points("competitor_page", rules.competitor_page.points)?;
        check_points("repeat_visit", rules.repeat_visit.points)?;
        check_patterns("pricing_page.paths", &mut rules.pricing_page.paths)?;
        check_patterns("docs_deep_dive.paths", &mut rules.docs_deep_dive.paths)?;
        check_patterns("competitor_page.paths", &mut rules.competitor_page.paths)?;
        let docs = &rules.docs_deep_dive;
        if !(2..=20).contains(&docs.distinct_pages) {
            return Err("docs_deep_dive.distinct_pages: between 2 and 20".into());
        }
        if !(60..=86_400).contains(&docs.within_seconds) {
            return Err("docs_deep_dive.within_seconds: between 60 and 86400".into());
        }
        let demo = &mut rules.demo_form_abandon;
        if demo.forms.is_empty() || demo.forms.len() > MAX_PATTERNS {
            return Err(format!(
                "demo_form_abandon.forms: 1 to {MAX_PATTERNS} form names"
            ));
        }
        for form in &mut demo.forms {
            *form = form.trim().to_ascii_lowercase();
            if !is_form_name(form) {
                return Err(format!(
                    "demo_form_abandon.forms: {form:?} is not a form name (a-z, 0-9, _ and -, at most 40)"
                ));
            }
        }
        if !(1..=7 * 86_400).contains(&demo.abandon_after_seconds) {
            return Err("demo_form_abandon.abandon_after_seconds: between 1 and 604800".into());
        }
        if !(2..=365).contains(&rules.repeat_visit.visit_day) {
            return Err("repeat_visit.visit_day: between 2 and 365".into());
        }
        if let Some(url) = &self.alert_webhook_url {
            crate::destinations::webhook::check_url(url)
                .map_err(|reason| format!("alert_webhook_url: {reason}"))?;
        }
        if let Some(seed) = &mut self.linkedin_seed {
            seed.ad_account = seed.ad_account.trim().to_string();
            if urn_id(&seed.ad_account, "urn:li:sponsoredAccount:").is_none() {
                return Err(
                    "linkedin_seed.ad_account: urn:li:sponsoredAccount:<numeric id>".into(),
                );
            }
            match seed.segment.as_deref().map(str::trim) {
                Some(segment) => {
                    if urn_id(segment, "urn:li:dmpSegment:").is_none() {
                        return Err("linkedin_seed.segment: urn:li:dmpSegment:<numeric id>".into());
                    }
                    seed.segment = Some(segment.to_string());
                }
                None if !seed.create_segment => {
                    return Err(
                        "linkedin_seed: name a segment, or set create_segment to have one created"
                            .into(),
                    )
                }
                None => {}
            }
            let name = seed.segment_name.trim();
            if name.is_empty() || name.chars().count() > 100 {
                return Err("linkedin_seed.segment_name: 1 to 100 characters".into());
            }
            seed.segment_name = name.to_string();
        }
        Ok(self)
    }

    pub fn points(&self, rule: Rule) -> u32 {
        let rules = &self.rules;
        match rule {
            Rule::PricingPage => rules.pricing_page.points,
            Rule::DocsDeepDive => rules.docs_deep_dive.points,
            Rule::DemoFormAbandon => rules.demo_form_abandon.points,
            Rule::CompetitorPage => rules.competitor_page.points,
            Rule::RepeatVisit => rules.repeat_visit.points,
        }
    }

    /// `score` points held at `from_ms`, as they stand at `to_ms`.
    pub fn decayed(&self, score: f64, from_ms: i64, to_ms: i64) -> f64 {
        match self.decay_half_life_days {
            Some(days) if to_ms > from_ms => {
                let half_lives = (to_ms - from_ms) as f64 / (f64::from(days) * DAY_MS as f64);
                score * 0.5f64.powf(half_lives)
            }
            _ => score,
        }
    }

    /// A number that orders visitors by their score now, whatever "now" is: with decay
    /// every score shrinks by the same factor, so log2(score) plus the half-lives since
    /// an epoch keeps its order forever and is stored once per change.
    pub fn rank_key(&self, score: f64, at_ms: i64) -> i64 {
        // Scored visitors always hold at least one signal's points, so their key is
        // positive; 0 means "no score". Keys stay within JavaScript's safe integers.
        if score <= 0.0 {
            return 0;
        }
        let key = match self.decay_half_life_days {
            Some(days) => score.log2() + at_ms as f64 / (f64::from(days) * DAY_MS as f64),
            None => score,
        };
        (key * 1_000_000.0) as i64
    }
}

fn check_points(rule: &str, points: u32) -> Result<(), String> {
    if points > MAX_POINTS {
        return Err(format!("{rule}.points: at most {MAX_POINTS}"));
    }
    Ok(())
}

fn check_patterns(field: &str, patterns: &mut [String]) -> Result<(), String> {
    if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
        return Err(format!("{field}: 1 to {MAX_PATTERNS} path patterns"));
    }
    for pattern in patterns.iter_mut() {
        *pattern = pattern.trim().to_ascii_lowercase();
        let ok = pattern.starts_with('/')
            && pattern.len() <= MAX_PATTERN_CHARS
            && !pattern.contains("***")
            && pattern
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '?' && c != '#');
        if !ok {
            return Err(format!(
                "{field}: {pattern:?} is not a path pattern (starts with /, no query or fragment, * within a segment, ** across segments)"
            ));
        }
    }
    Ok(())
}

fn is_form_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The numeric id of `urn` if it is `prefix<digits>`.
pub fn urn_id<'a>(urn: &'a str, prefix: &str) -> Option<&'a str> {
    urn.strip_prefix(prefix)
        .filter(|id| !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
}

/// A page path as scored and stored: no query or fragment (they carry personal data),
/// lower case, no trailing slash except the root. `None` if it is not a path.
pub fn normalize_path(raw: &str) -> Option<String> {
    let path = raw.split(['?', '#']).next().unwrap_or("").trim();
    if !path.starts_with('/') || path.chars().count() > MAX_PATH_CHARS {
        return None;
    }
    if path.chars().any(char::is_control) {
        return None;
    }
    let mut path = path.to_lowercase();
    while path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    Some(path)
}

/// Whether `path` matches `pattern`: `*` stands for any characters within one segment,
/// `**` for any characters across segments.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    enum Token {
        Literal(u8),
        Star,
        DoubleStar,
    }
    let bytes = pattern.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'*' {
            if bytes.get(i + 1) == Some(&b'*') {
                tokens.push(Token::DoubleStar);
                i += 2;
            } else {
                tokens.push(Token::Star);
                i += 1;
            }
        } else {
            tokens.push(Token::Literal(bytes[i]));
            i += 1;
        }
    }
    let path = path.as_bytes();
    // matched[j]: the tokens so far match the first j bytes of the path.
    let mut matched = vec![false; path.len() + 1];
    matched[0] = true;
    for token in &tokens {
        let mut next = vec![false; path.len() + 1];
        for j in 0..=path.len() {
            next[j] = match token {
                Token::Literal(b) => j > 0 && matched[j - 1] && path[j - 1] == *b,
                Token::Star => matched[j] || (j > 0 && next[j - 1] && path[j - 1] != b'/'),
                Token::DoubleStar => matched[j] || (j > 0 && next[j - 1]),
            };
        }
        matched = next;
    }
    matched[path.len()]
}

fn matches_any(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| path_matches(p, path))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormStep {
    Start,
    Submit,
}

/// What the pixel saw the visitor do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Activity {
    PageView {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    Form {
        form: String,
        step: FormStep,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
}

impl Activity {
    /// A page view from the beacon's fields, cleaned (the path loses any query).
    pub fn page_view(path: &str, title: Option<&str>) -> Result<Activity, String> {
        let path = normalize_path(path).ok_or("page.path must be a path starting with /")?;
        let title = title
            .map(|t| t.trim().chars().take(MAX_TITLE_CHARS).collect::<String>())
            .filter(|t| !t.is_empty());
        Ok(Activity::PageView { path, title })
    }

    pub fn form(form: &str, step: FormStep, path: Option<&str>) -> Result<Activity, String> {
        let form = form.trim().to_ascii_lowercase();
        if !is_form_name(&form) {
            return Err("form.form must be a form name (a-z, 0-9, _ and -, at most 40)".into());
        }
        Ok(Activity::Form {
            form,
            step,
            path: path.and_then(normalize_path),
        })
    }

    pub fn path(&self) -> Option<&str> {
        match self {
            Activity::PageView { path, .. } => Some(path),
            Activity::Form { path, .. } => path.as_deref(),
        }
    }
}

/// Points earned, with what earned them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub rule: Rule,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub points: u32,
    /// The visitor's score right after it.
    pub score_after: f64,
}

/// The moment a visitor entered the high-intent queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qualification {
    pub at_ms: i64,
    pub rule: Rule,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenForm {
    pub form: String,
    pub started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Everything the rules need to remember about one visitor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VisitorState {
    pub score: f64,
    pub score_at_ms: i64,
    pub visit_days: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_visit_day: Option<i64>,
    /// Docs pages seen inside the deep-dive window: (path, last seen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_docs: Vec<(String, i64)>,
    /// Tracked forms started and not yet submitted or abandoned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_forms: Vec<OpenForm>,
    /// Rule → the UTC day it last scored: each rule scores once a day at most.
    #[serde(default)]
    pub scored_days: BTreeMap<Rule, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualified: Option<Qualification>,
}

/// What one step earned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub signals: Vec<Signal>,
    pub qualified: Option<Qualification>,
}

impl Outcome {
    fn absorb(&mut self, other: Outcome) {
        self.signals.extend(other.signals);
        if other.qualified.is_some() {
            self.qualified = other.qualified;
        }
    }
}

pub fn day_of(at_ms: i64) -> i64 {
    at_ms.div_euclid(DAY_MS)
}

impl VisitorState {
    /// The score as it stands at `at_ms` (decayed, if the merchant decays).
    pub fn score_at(&self, settings: &IntentSettings, at_ms: i64) -> f64 {
        settings.decayed(self.score, self.score_at_ms, at_ms)
    }

    /// When the next open form turns into an abandon, if one is open.
    pub fn next_due_ms(&self, settings: &IntentSettings) -> Option<i64> {
        let window = i64::from(settings.rules.demo_form_abandon.abandon_after_seconds) * 1000;
        self.open_forms
            .iter()
            .map(|f| f.started_at_ms + window)
            .min()
    }

    /// Open forms whose window has passed by `now_ms` become abandons.
    pub fn expire(&mut self, settings: &IntentSettings, now_ms: i64) -> Outcome {
        let window = i64::from(settings.rules.demo_form_abandon.abandon_after_seconds) * 1000;
        let (due, open): (Vec<OpenForm>, Vec<OpenForm>) = std::mem::take(&mut self.open_forms)
            .into_iter()
            .partition(|f| f.started_at_ms + window <= now_ms);
        self.open_forms = open;
        let mut outcome = Outcome::default();
        let mut due = due;
        due.sort_by_key(|f| f.started_at_ms);
        for form in due {
            outcome.absorb(self.award(
                settings,
                Rule::DemoFormAbandon,
                form.started_at_ms + window,
                form.path.clone(),
            ));
        }
        outcome
    }

    /// One thing the visitor did at `at_ms`.
    pub fn observe(
        &mut self,
        settings: &IntentSettings,
        at_ms: i64,
        activity: &Activity,
    ) -> Outcome {
        let mut outcome = self.expire(settings, at_ms);
        let rules = &settings.rules;
        match activity {
            Activity::PageView { path, .. } => {
                let day = day_of(at_ms);
                if self.last_visit_day != Some(day) {
                    self.last_visit_day = Some(day);
                    self.visit_days += 1;
                    if self.visit_days == rules.repeat_visit.visit_day {
                        outcome.absorb(self.award(
                            settings,
                            Rule::RepeatVisit,
                            at_ms,
                            Some(path.clone()),
                        ));
                    }
                }
                if matches_any(&rules.pricing_page.paths, path) {
                    outcome.absorb(self.award(
                        settings,
                        Rule::PricingPage,
                        at_ms,
                        Some(path.clone()),
                    ));
                }
                if matches_any(&rules.competitor_page.paths, path) {
                    outcome.absorb(self.award(
                        settings,
                        Rule::CompetitorPage,
                        at_ms,
                        Some(path.clone()),
                    ));
                }
                let docs = &rules.docs_deep_dive;
                if matches_any(&docs.paths, path) {
                    let window = i64::from(docs.within_seconds) * 1000;
                    self.recent_docs
                        .retain(|(p, at)| at_ms - *at < window && p != path);
                    self.recent_docs.push((path.clone(), at_ms));
                    if self.recent_docs.len() > MAX_RECENT_DOCS {
                        self.recent_docs.remove(0);
                    }
                    if self.recent_docs.len() >= docs.distinct_pages as usize {
                        outcome.absorb(self.award(
                            settings,
                            Rule::DocsDeepDive,
                            at_ms,
                            Some(path.clone()),
                        ));
                    }
                }
            }
            Activity::Form { form, step, path } => {
                if rules.demo_form_abandon.forms.contains(form) {
                    match step {
                        FormStep::Start => {
                            if !self.open_forms.iter().any(|f| &f.form == form) {
                                self.open_forms.push(OpenForm {
                                    form: form.clone(),
                                    started_at_ms: at_ms,
                                    path: path.clone(),
                                });
                            }
                        }
                        FormStep::Submit => self.open_forms.retain(|f| &f.form != form),
                    }
                }
            }
        }
        outcome
    }

    fn award(
        &mut self,
        settings: &IntentSettings,
        rule: Rule,
        at_ms: i64,
        path: Option<String>,
    ) -> Outcome {
        let points = settings.points(rule);
        let day = day_of(at_ms);
        if points == 0 || self.scored_days.get(&rule) == Some(&day) {
            return Outcome::default();
        }
        self.scored_days.insert(rule, day);
        let at_ms = at_ms.max(self.score_at_ms);
        self.score = self.score_at(settings, at_ms) + f64::from(points);
        self.score_at_ms = at_ms;
        let signal = Signal {
            rule,
            at_ms,
            path,
            points,
            score_after: self.score,
        };
        let mut outcome = Outcome {
            signals: vec![signal],
            qualified: None,
        };
        if self.qualified.is_none() && self.score >= f64::from(settings.threshold) {
            let qualification = Qualification {
                at_ms,
                rule,
                score: self.score,
            };
            self.qualified = Some(qualification.clone());
            outcome.qualified = Some(qualification);
        }
        outcome
    }
}

/// The Slack-compatible message for a visitor entering the high-intent queue: `text`
/// for any incoming webhook, plus the facts as fields for other receivers.
pub fn alert_message(
    merchant_id: &str,
    visitor_id: &str,
    qualification: &Qualification,
    email: Option<&str>,
    timeline_url: Option<&str>,
) -> serde_json::Value {
    let who = email.unwrap_or("an anonymous visitor");
    let mut text = format!(
        "High-intent visitor: {who} reached {:.0} points ({} crossed the threshold).",
        qualification.score,
        qualification.rule.label()
    );
    if let Some(url) = timeline_url {
        text.push_str(&format!(" Timeline: {url}"));
    }
    serde_json::json!({
        "text": text,
        "merchant_id": merchant_id,
        "visitor_id": visitor_id,
        "email": email,
        "score": (qualification.score * 100.0).round() / 100.0,
        "rule": qualification.rule.as_str(),
        "qualified_at": crate::time::utc_rfc3339(qualification.at_ms.div_euclid(1000)),
        "timeline_url": timeline_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_500_000_000; // 2025-11-30, mid-morning UTC
    const MIN: i64 = 60_000;

    fn view(path: &str) -> Activity {
        Activity::page_view(path, Some("A page")).unwrap()
    }

    fn form(step: FormStep) -> Activity {
        Activity::form("demo", step, Some("/demo")).unwrap()
    }

    fn run(settings: &IntentSettings, steps: &[(i64, Activity)]) -> (VisitorState, Vec<Signal>) {
        let mut state = VisitorState::default();
        let mut signals = Vec::new();
        for (at, activity) in steps {
            signals.extend(state.observe(settings, *at, activity).signals);
        }
        (state, signals)
    }

    fn rules_of(signals: &[Signal]) -> Vec<Rule> {
        signals.iter().map(|s| s.rule).collect()
    }

    #[test]
    fn patterns_match_within_and_across_segments() {
        let table = [
            ("/pricing*", "/pricing", true),
            ("/pricing*", "/pricing-enterprise", true),
            ("/pricing*", "/pricing/annual", false),
            ("/docs/**", "/docs/api/webhooks", true),
            ("/docs/**", "/docs/a", true),
            ("/docs/**", "/docs", false),
            ("/docs/**", "/documentation/a", false),
            ("/vs/*", "/vs/segment", true),
            ("/vs/*", "/vs/segment/pricing", false),
            ("/*/pricing", "/en/pricing", true),
            ("/**/pricing", "/a/b/pricing", true),
            ("/about", "/about", true),
            ("/about", "/about-us", false),
        ];
        for (pattern, path, expected) in table {
            assert_eq!(path_matches(pattern, path), expected, "{pattern} vs {path}");
        }
    }

    #[test]
    fn paths_lose_query_fragment_case_and_trailing_slash() {
        assert_eq!(
            normalize_path("/Pricing/?email=a@b.com#top").as_deref(),
            Some("/pricing")
        );
        assert_eq!(normalize_path("/").as_deref(), Some("/"));
        assert_eq!(normalize_path("https://x.com/a"), None);
        assert_eq!(normalize_path("/a\nb"), None);
        assert_eq!(normalize_path(&format!("/{}", "a".repeat(600))), None);
    }

    #[test]
    fn the_landing_page_journey_scores_twenty_and_qualifies_once() {
        let settings = IntentSettings::default();
        let (state, signals) = run(
            &settings,
            &[
                (T0, view("/pricing")),
                (T0 + MIN, view("/pricing")), // a reload farms nothing
                (T0 + 2 * MIN, view("/docs/start")),
                (T0 + 3 * MIN, view("/docs/api")),
                (T0 + 4 * MIN, view("/docs/webhooks")),
                (T0 + 5 * MIN, form(FormStep::Start)),
                (T0 + 6 * MIN, view("/vs/competitor")),
                // 30 minutes after the start: the form is abandoned.
                (T0 + 40 * MIN, view("/blog")),
            ],
        );
        assert_eq!(
            rules_of(&signals),
            [
                Rule::PricingPage,
                Rule::DocsDeepDive,
                Rule::CompetitorPage,
                Rule::DemoFormAbandon
            ]
        );
        let abandon = &signals[3];
        assert_eq!(abandon.at_ms, T0 + 35 * MIN);
        assert_eq!(abandon.path.as_deref(), Some("/demo"));
        assert_eq!(state.score, 20.0);
        let qualified = state.qualified.expect("qualified");
        assert_eq!(qualified.rule, Rule::DemoFormAbandon);
        assert_eq!(qualified.at_ms, T0 + 35 * MIN);
        assert_eq!(qualified.score, 20.0);
    }

    #[test]
    fn a_submitted_form_is_not_abandoned_and_expiry_needs_the_window() {
        let settings = IntentSettings::default();
        let (mut state, signals) = run(
            &settings,
            &[
                (T0, form(FormStep::Start)),
                (T0 + 10 * MIN, form(FormStep::Submit)),
                (T0 + 60 * MIN, view("/")),
            ],
        );
        assert!(signals.is_empty());
        state.observe(&settings, T0 + 61 * MIN, &form(FormStep::Start));
        assert_eq!(state.next_due_ms(&settings), Some(T0 + 91 * MIN));
        assert!(state.expire(&settings, T0 + 90 * MIN).signals.is_empty());
        let late = state.expire(&settings, T0 + 91 * MIN);
        assert_eq!(rules_of(&late.signals), [Rule::DemoFormAbandon]);
        assert!(state.open_forms.is_empty());
    }

    #[test]
    fn docs_pages_must_be_distinct_and_inside_the_window() {
        let settings = IntentSettings::default();
        let (_, same_page) = run(
            &settings,
            &[
                (T0, view("/docs/a")),
                (T0 + MIN, view("/docs/a")),
                (T0 + 2 * MIN, view("/docs/a")),
            ],
        );
        assert!(same_page.is_empty());
        let (_, too_slow) = run(
            &settings,
            &[
                (T0, view("/docs/a")),
                (T0 + 20 * MIN, view("/docs/b")),
                (T0 + 40 * MIN, view("/docs/c")),
            ],
        );
        assert!(too_slow.is_empty(), "a and c are 40 minutes apart");
        let (_, revisit) = run(
            &settings,
            &[
                (T0, view("/docs/a")),
                (T0 + 20 * MIN, view("/docs/b")),
                (T0 + 40 * MIN, view("/docs/c")),
                (T0 + 41 * MIN, view("/docs/a")),
            ],
        );
        assert_eq!(rules_of(&revisit), [Rule::DocsDeepDive]);
    }

    #[test]
    fn each_rule_scores_once_a_day_and_the_third_visit_day_scores() {
        let settings = IntentSettings::default();
        let (state, signals) = run(
            &settings,
            &[
                (T0, view("/pricing")),
                (T0 + 3 * 3_600_000, view("/pricing")),
                (T0 + DAY_MS, view("/pricing")),
                (T0 + 2 * DAY_MS, view("/")),
                (T0 + 3 * DAY_MS, view("/")),
            ],
        );
        assert_eq!(
            rules_of(&signals),
            [Rule::PricingPage, Rule::PricingPage, Rule::RepeatVisit]
        );
        assert_eq!(state.visit_days, 4);
        assert_eq!(state.score, 15.0);
        assert!(state.qualified.is_some());
    }

    #[test]
    fn merchant_rules_and_threshold_apply_and_zero_points_turn_a_rule_off() {
        let settings: IntentSettings = serde_json::from_value(serde_json::json!({
            "threshold": 4,
            "rules": {
                "pricing_page": { "paths": ["/tarifs*"], "points": 0 },
                "competitor_page": { "paths": ["/compare-*"], "points": 4 }
            }
        }))
        .unwrap();
        let settings = settings.validated().unwrap();
        let (state, signals) = run(
            &settings,
            &[(T0, view("/tarifs")), (T0 + MIN, view("/compare-acme"))],
        );
        assert_eq!(rules_of(&signals), [Rule::CompetitorPage]);
        assert_eq!(state.qualified.unwrap().rule, Rule::CompetitorPage);
        assert_eq!(settings.rules.docs_deep_dive, default_docs());
    }

    #[test]
    fn decay_halves_points_per_half_life_and_keeps_the_ranking_stable() {
        let settings = IntentSettings {
            decay_half_life_days: Some(7),
            ..IntentSettings::default()
        };
        let (state, _) = run(&settings, &[(T0, view("/pricing"))]);
        assert_eq!(state.score_at(&settings, T0 + 7 * DAY_MS), 2.5);
        assert_eq!(state.score_at(&settings, T0 + 14 * DAY_MS), 1.25);
        // 5 points two weeks ago plus 5 today: 1.25 + 5.
        let (state, signals) = run(
            &settings,
            &[(T0, view("/pricing")), (T0 + 14 * DAY_MS, view("/pricing"))],
        );
        assert_eq!(signals[1].score_after, 6.25);
        assert!(state.qualified.is_none());
        // Older strong intent and newer weak intent rank by their value now.
        let old = settings.rank_key(20.0, T0);
        let new = settings.rank_key(6.0, T0 + 14 * DAY_MS);
        assert!(new > old, "20 points two half-lives ago are 5 now, below 6");
        let off = IntentSettings::default();
        assert_eq!(off.decayed(5.0, T0, T0 + 100 * DAY_MS), 5.0);
        assert!(off.rank_key(20.0, T0) > off.rank_key(6.0, T0 + DAY_MS));
    }

    #[test]
    fn settings_are_validated_when_stored() {
        let bad = [
            (serde_json::json!({ "threshold": 0 }), "threshold"),
            (
                serde_json::json!({ "rules": { "pricing_page": { "paths": ["pricing"], "points": 5 } } }),
                "pricing_page.paths",
            ),
            (
                serde_json::json!({ "rules": { "pricing_page": { "paths": ["/p?x=1"], "points": 5 } } }),
                "pricing_page.paths",
            ),
            (
                serde_json::json!({ "rules": { "demo_form_abandon": { "forms": ["Demo Form"], "points": 8, "abandon_after_seconds": 60 } } }),
                "demo_form_abandon.forms",
            ),
            (
                serde_json::json!({ "alert_webhook_url": "http://hooks.slack.com/x" }),
                "alert_webhook_url",
            ),
            (
                serde_json::json!({ "linkedin_seed": { "ad_account": "123" } }),
                "linkedin_seed.ad_account",
            ),
            (
                serde_json::json!({ "linkedin_seed": { "ad_account": "urn:li:sponsoredAccount:123" } }),
                "linkedin_seed",
            ),
            (serde_json::json!({ "decay_half_life_days": 0 }), "decay"),
        ];
        for (json, field) in bad {
            let settings: IntentSettings = serde_json::from_value(json.clone()).unwrap();
            let err = settings.validated().unwrap_err();
            assert!(err.starts_with(field), "{json}: {err}");
        }
        let good: IntentSettings = serde_json::from_value(serde_json::json!({
            "alert_webhook_url": "https://hooks.slack.com/services/T0/B0/x",
            "linkedin_seed": { "ad_account": "urn:li:sponsoredAccount:507404993", "segment": "urn:li:dmpSegment:1234" },
            "rules": { "pricing_page": { "paths": ["/Pricing*"], "points": 6 } }
        }))
        .unwrap();
        let good = good.validated().unwrap();
        assert_eq!(good.rules.pricing_page.paths, ["/pricing*"]);
        assert!(
            serde_json::from_value::<IntentSettings>(serde_json::json!({ "treshold": 3 })).is_err()
        );
    }

    #[test]
    fn the_alert_reads_in_slack_and_carries_the_facts() {
        let message = alert_message(
            "acme",
            "0123456789abcdef0123456789abcdef",
            &Qualification {
                at_ms: T0,
                rule: Rule::DemoFormAbandon,
                score: 20.0,
            },
            Some("ada@example.com"),
            Some("https://tl.example/app/visitors/0123"),
        );
        assert_eq!(
            message["text"],
            "High-intent visitor: ada@example.com reached 20 points (Demo form abandoned crossed the threshold). Timeline: https://tl.example/app/visitors/0123"
        );
        assert_eq!(message["rule"], "demo_form_abandon");
        assert_eq!(message["score"], 20.0);
    }
}
