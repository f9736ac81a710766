//! # fusebox
//!
//! A sidecar reverse proxy for AI and vision services. It takes an application's
//! outbound HTTP and gRPC calls on localhost and forwards them to upstream model
//! services through per-endpoint circuit breakers, retries, deadlines and pooled
//! keep-alive connections, stamping correlation ids and writing one access-log line per
//! request. The product contract is `DESIGN.md` (in the shared docs); `docs/` documents
//! the configuration.
//!
//! # Layout
//!
//! ```text
//! main.rs          CLI -> config -> logging -> app::run
//! cli.rs           clap definitions (run, validate, demo, demo-upstream)
//! app.rs           wiring: shared state, snapshot, bind, serve, admin, reloader,
//!                  shutdown order; start() / start_with() for tests
//! config/          file.rs (serde mirror) -> validate.rs, policy.rs, routes.rs ->
//!                  types.rs (valid values); defaults.rs, units.rs, env.rs, error.rs
//! snapshot.rs      everything built from one Config, held in one ArcSwap; Shared:
//!                  what outlives a config (metrics, endpoint registry, replay budget)
//! control.rs       what the admin API and reloader share: snapshot, metrics, readiness
//! reload.rs        directory watch + SIGHUP -> debounce -> parse -> build -> swap
//! metrics.rs       every metric name; handles resolved per route/upstream/endpoint
//! router.rs        the route table (most specific wins)
//! admission/       rate limits, concurrency shedding, fault injection
//! body.rs          request bodies: caps, stall timeout, replay for retries, budget
//! proxy/mod.rs     the request path as one straight line
//! proxy/ctx        RequestCtx: the one per-request value (ids, deadline, route,
//!                  attempts, outcome, guards); writes the access-log line on drop
//! proxy/listener   accept loop, connection limits, header/idle timeouts (408), drain
//! proxy/correlate  ids, traceparent, forwarding and hop-by-hop headers
//! proxy/forward    the attempt loop: pick, admit, send, classify, record, retry
//! proxy/attempt    one attempt: the upstream request, its timeout, its outcome
//! proxy/classify   the pure classifier: outcome x request x policy -> verdict
//! proxy/apply      carries a verdict out on the breakers and retry counters
//! proxy/fallback   static answer or a second upstream
//! proxy/resp_body  the response body; carries the RequestCtx until the last byte
//! proxy/error      typed errors -> the contract's JSON / gRPC answers
//! upstream/mod.rs  an upstream in one snapshot: policies, balancer, endpoint list
//! upstream/endpoint  EndpointCore (state of an address) and Endpoint (its view)
//! upstream/registry  cores and breaker sets by identity, shared by every snapshot
//! upstream/breakers  the breakers of one (endpoint, policy), with partitions
//! upstream/pool    per-endpoint connection pool (HTTP/1.1 stack; h2 connections added
//!                  as peers' stream limits fill: pool/h2.rs, pool/peer_limit.rs)
//! upstream/balancer, breaker/, partition, retry, health, dns
//! admin/           the admin listener: metrics, breakers, health, config
//! access_log.rs    one JSON line per request, formatted per thread, written by a
//!                  writer thread behind a bounded queue
//! otel/            OpenTelemetry traces: sampling, server/attempt spans, OTLP export
//! telemetry.rs     tracing subscriber (JSON or text)
//! demo.rs          demo upstreams and `fusebox demo`
//! ```
//!
//! Dependencies point one way: `proxy` -> `snapshot` -> `upstream`, `admission`,
//! `router` -> `body`, `config`, `metrics`; `access_log` reads a plain entry and
//! depends on none of them.
//!
//! # The request path
//!
//! ```text
//! accept (listener: HTTP/1.1 + h2c; slow head -> 408)
//!   -> correlate (ids, traceparent, X-Forwarded-*, hop-by-hop strip) -> RequestCtx
//!   -> route (host, path prefix, method, headers; most specific wins); deadline =
//!      min(route timeout, grpc-timeout, x-request-timeout-ms)
//!   -> admit (declared body size, rate limit, concurrency, fault injection)
//!   -> attempt loop over the request's pinned endpoint list, until the deadline:
//!        pick endpoint (balancer skips endpoints whose breakers refuse) ->
//!        admit on the endpoint's breaker (and the key's) -> pooled connection ->
//!        send (per-attempt timeout capped by the time left) -> classify ->
//!        record the verdict on the breakers -> retry? (verdict, budget, backoff,
//!        another endpoint, replayed body)
//!   -> fallback (static answer or a second upstream)
//!   -> respond (ids echoed; metrics; the access-log line when the body is done)
//! ```

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod otel;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
