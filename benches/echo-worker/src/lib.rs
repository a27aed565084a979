//! A bare echo worker: what any Rust worker costs per request under `wrangler dev`, the
//! floor TrackLayer's ingest is compared with by `scripts/bench-ingest.sh`.

use worker::{event, Context, Env, Request, Response, Result};

#[event(fetch)]
async fn fetch(mut req: Request, _env: Env, _ctx: Context) -> Result<Response> {
    let body = req.bytes().await?;
    Response::from_bytes(body)
}
