//! Shared by the table-driven mapping tests: fixtures and one-request ingestion.

use tracklayer::config::MerchantConfig;
use tracklayer::error::IngestError;
use tracklayer::ingest;
use tracklayer::sources::{Headers, SourceOutput, WebhookRequest};

pub const URL: &str = "https://edge.tracklayer.test/v1/integrations/test/events?merchant_id=m";

pub fn fixture(source: &str, name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{source}/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {source}/{name}: {e}"))
}

/// Every notification a request carried.
pub fn ingest_all(
    source: &str,
    merchant: &MerchantConfig,
    headers: &Headers,
    body: &[u8],
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    ingest::verify_and_map(
        source,
        merchant,
        &WebhookRequest::post(URL, headers, body),
        now,
    )
}

/// The single notification a request carried.
pub fn ingest_one(
    source: &str,
    merchant: &MerchantConfig,
    headers: &Headers,
    body: &[u8],
    now: i64,
) -> Result<SourceOutput, IngestError> {
    ingest_all(source, merchant, headers, body, now).map(|mut outputs| {
        assert_eq!(outputs.len(), 1, "one notification expected");
        outputs.remove(0)
    })
}

/// One row of a mapping table: the fixture, the event it must yield (`None`: recorded as
/// ignored), its occurrence key, and JSON-pointer fields of the canonical event ("" =
/// only present).
pub struct Case {
    pub fixture: &'static str,
    pub name: Option<tracklayer::event::EventName>,
    pub occurrence_key: &'static str,
    pub fields: &'static [(&'static str, &'static str)],
}

pub fn check(case: &Case, output: &SourceOutput) {
    let Some(name) = case.name else {
        assert!(output.events.is_empty(), "{}", case.fixture);
        assert!(output.ignored_reason.is_some(), "{}", case.fixture);
        return;
    };
    assert_eq!(output.events.len(), 1, "{}", case.fixture);
    let event = &output.events[0];
    assert_eq!(event.name, name, "{}", case.fixture);
    assert_eq!(
        event.occurrence_key, case.occurrence_key,
        "{}",
        case.fixture
    );
    let json = serde_json::to_value(event).unwrap();
    for (pointer, expected) in case.fields {
        let found = json
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{} {pointer} missing in {json}", case.fixture));
        let text = found
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| found.to_string());
        if !expected.is_empty() {
            assert_eq!(text, *expected, "{} {pointer}", case.fixture);
        }
    }
}

/// The pure part of the worker's path for a sequence of notifications, in arrival order:
/// verify + map, plan against the stored subscription and customer (as the ledger and
/// D1 keep them), store each forwardable event (a sibling of an already stored event
/// fills its gaps, as the store's merge does), and apply each subscription observation
/// when it is newer. What the consumer then reads is [`Pipeline::forwarded`].
#[derive(Default)]
pub struct Pipeline {
    state: std::collections::HashMap<String, tracklayer::ledger::SubscriptionState>,
    customers: std::collections::HashMap<String, tracklayer::enrich::KnownCustomer>,
    stored: std::collections::BTreeMap<String, tracklayer::event::CanonicalEvent>,
}

impl Pipeline {
    pub fn receive(
        &mut self,
        source: &str,
        merchant: &MerchantConfig,
        headers: &Headers,
        body: &[u8],
        now: i64,
    ) {
        for output in ingest_all(source, merchant, headers, body, now).expect("accepted") {
            let subscription = output
                .ordering_key
                .strip_prefix("subscription:")
                .and_then(|id| self.state.get(id))
                .cloned();
            let customer = output
                .events
                .iter()
                .find_map(|e| e.customer.customer_id.clone())
                .and_then(|id| self.customers.get(&id))
                .cloned();
            let context = tracklayer::enrich::StoredContext {
                subscription,
                customer,
                crm: None,
            };
            let plan = ingest::plan(output, merchant, &context);
            for event in plan.output.events {
                if !event.name.is_forwardable() {
                    continue;
                }
                match self.stored.get_mut(&event.event_id) {
                    Some(stored) => stored.merge_sibling(&event),
                    None => {
                        self.stored.insert(event.event_id.clone(), event);
                    }
                }
            }
            if let Some(observation) = plan.output.subscription {
                let current = self.state.get(&observation.subscription_id);
                if let Some(next) = tracklayer::ledger::next_state(current, &observation) {
                    self.state.insert(observation.subscription_id.clone(), next);
                }
            }
            if let Some(record) = plan.output.customer {
                self.customers.insert(
                    record.customer_id.clone(),
                    tracklayer::enrich::KnownCustomer {
                        email: record.email,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// The forwardable events, as the consumer reads them from the store.
    pub fn forwarded(&self) -> Vec<tracklayer::event::CanonicalEvent> {
        self.stored.values().cloned().collect()
    }
}

/// Every ordering of `items` (Heap's algorithm).
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn heap<T: Clone>(k: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, items, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// What a forwarded event is worth, for comparing arrival orders.
pub fn value_fields(event: &tracklayer::event::CanonicalEvent) -> String {
    let v = &event.values;
    format!(
        "{} {} currency={:?} mrr={:?} arr={:?} gross={:?} net={:?} tax={:?} delta={:?}",
        event.event_id,
        event.name.as_str(),
        v.currency,
        v.mrr.map(|a| a.to_string()),
        v.arr.map(|a| a.to_string()),
        v.gross_value.map(|a| a.to_string()),
        v.net_value.map(|a| a.to_string()),
        v.tax_amount.map(|a| a.to_string()),
        v.mrr_delta.map(|a| a.to_string()),
    )
}
