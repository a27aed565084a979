//! Which binding holds a region's data: D1 database, delivery queues, and the ledger
//! Durable Objects (addressed through the namespace's jurisdiction for the EU).

use crate::config::Region;
use worker::js_sys;
use worker::wasm_bindgen::JsCast;
use worker::{Env, ObjectNamespace, Result};

pub const GLOBAL_DB: &str = "DB";

pub fn db_binding(region: Region) -> &'static str {
    match region {
        Region::Us => "DB_US",
        Region::Eu => "DB_EU",
    }
}

pub fn deliveries_binding(region: Region) -> &'static str {
    match region {
        Region::Us => "DELIVERIES_US",
        Region::Eu => "DELIVERIES_EU",
    }
}

/// Puts delivery jobs on the region's queue: one message per event with its
/// destinations, the event inline or, when too large for one message, by reference to
/// the stored event; batches split by count and bytes. Returns the messages sent.
pub async fn enqueue_jobs<'a>(
    env: &Env,
    region: Region,
    jobs: impl IntoIterator<Item = &'a crate::delivery::DeliveryJob>,
) -> Result<usize> {
    let messages = crate::delivery::EventMessage::for_jobs(jobs, false);
    send_messages(env, region, messages, None).await
}

/// Sends event messages, delayed by `delay_seconds` if given. Returns how many.
pub async fn send_messages(
    env: &Env,
    region: Region,
    messages: Vec<crate::delivery::EventMessage>,
    delay_seconds: Option<u32>,
) -> Result<usize> {
    let bodies: Vec<String> = messages.into_iter().map(|m| m.encode()).collect();
    let count = bodies.len();
    if bodies.is_empty() {
        return Ok(0);
    }
    for batch in crate::delivery::queue_batches(bodies) {
        let batch = batch
            .into_iter()
            .map(|body| (body, delay_seconds))
            .collect();
        send_batch(env, region, batch).await?;
    }
    Ok(count)
}

/// Sends pre-encoded message bodies, each with its own delay, in one `sendBatch`
/// (the caller keeps within the batch limits: `delivery::queue_batches_by`).
pub async fn send_batch(
    env: &Env,
    region: Region,
    batch: Vec<(String, Option<u32>)>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    // Pre-serialised JSON as text: what arrives is exactly what was sent.
    let messages = batch
        .into_iter()
        .map(|(body, delay_seconds)| {
            let message =
                worker::MessageBuilder::new(body).content_type(worker::QueueContentType::Text);
            match delay_seconds {
                Some(seconds) => message.delay_seconds(seconds).build(),
                None => message.build(),
            }
        })
        .collect::<Vec<_>>();
    env.queue(deliveries_binding(region))?
        .send_batch(messages)
        .await
}

/// The region a queue belongs to, from its name (`tracklayer-deliveries-eu[-dlq]`).
pub fn queue_region(queue_name: &str) -> Region {
    if queue_name.contains("-eu") {
        Region::Eu
    } else {
        Region::Us
    }
}

/// Set only by local runs (`scripts/dev.sh`, the e2e harness): local workerd (still in
/// wrangler 4.164) throws "Jurisdiction restrictions are not implemented in workerd".
/// Never set it in a deployment: merchants' objects would leave their region's jurisdiction.
pub const LOCAL_WITHOUT_JURISDICTIONS: &str = "LOCAL_WORKERD_WITHOUT_JURISDICTIONS";

/// The merchants' object namespace for `region`: objects are created and stored in the
/// region's jurisdiction (`eu`, or `us`, which Durable Objects offer since 2026-06-26).
/// workers-rs 0.8 has no wrapper for `namespace.jurisdiction()`, so it is called
/// through the JS object.
pub fn merchant_namespace(env: &Env, region: Region) -> Result<ObjectNamespace> {
    let namespace = env.durable_object(super::merchant::BINDING)?;
    let local_only = env
        .var(LOCAL_WITHOUT_JURISDICTIONS)
        .is_ok_and(|v| v.to_string() == "true");
    if local_only {
        return Ok(namespace);
    }
    let name = match region {
        Region::Us => "us",
        Region::Eu => "eu",
    };
    let jurisdiction: js_sys::Function =
        js_sys::Reflect::get(namespace.as_ref(), &"jurisdiction".into())?.dyn_into()?;
    let scoped = jurisdiction.call1(namespace.as_ref(), &name.into())?;
    Ok(ObjectNamespace::unchecked_from_js(scoped))
}
