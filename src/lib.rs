//! TrackLayer: billing and CRM webhooks in, canonical lifecycle events, server-side
//! conversions out.
//!
//! Everything outside [`edge`] is a pure core that builds and tests natively; the edge
//! layer (wasm32 only) binds it to Cloudflare Workers: routes, queues, Durable Objects,
//! D1 and cron.

pub mod admin;
pub mod api_keys;
pub mod api_versions;
pub mod audit;
pub mod config;
pub mod delivery;
pub mod destinations;
pub mod enrich;
pub mod error;
pub mod event;
pub mod group_commit;
pub mod hashing;
pub mod health;
pub mod identity;
pub mod ingest;
pub mod ingest_rate;
pub mod input;
pub mod intent;
pub mod intent_store;
pub mod ledger;
pub mod log;
pub mod money;
pub mod ops_store;
pub mod pages;
pub mod pixel;
pub mod plans;
pub mod records;
pub mod rejections;
pub mod retention;
pub mod rfm;
pub mod rfm_store;
pub mod routes;
pub mod secrets;
pub mod seed;
pub mod sessions;
pub mod sources;
pub mod time;
pub mod touchpoints;

#[cfg(target_arch = "wasm32")]
mod edge;
