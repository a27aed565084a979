//! Every integration test in one binary (one link, shared helpers without
//! `dead_code` allowances): mapping tables over fixtures, properties and fuzzing, the
//! merchant's records over SQLite, the layering check, the end-to-end tests under
//! `wrangler dev`, and the load and proof scripts (ignored; run them by name, e.g.
//! `cargo test --release --test it proof_crash -- --ignored --nocapture`).

mod mapping;
mod support;

mod chargebee_mapping;
mod e2e_audit;
mod e2e_fanout;
mod e2e_intent;
mod e2e_ops;
mod e2e_outage;
mod e2e_pixel;
mod e2e_sources;
mod e2e_stripe_meta;
mod e2e_workspaces;
mod fuzz_parsers;
mod hubspot_mapping;
mod intent_store;
mod layering;
mod lemonsqueezy_mapping;
mod load_delivery;
mod openapi_routes;
mod paddle_mapping;
mod pipedrive_mapping;
mod proof_crash;
mod proof_flood;
mod recharge_mapping;
mod records_store;
mod salesforce_mapping;
mod signal_properties;
mod stripe_mapping;
