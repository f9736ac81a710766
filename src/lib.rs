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
//! app.rs           wiring: snapshot, bind, serve, admin, reloader, shutdown order;
//!                  start() / start_with() for tests
//! config/          file.rs (serde mirror) -> validate.rs, policy.rs, routes.rs ->
//!                  types.rs (valid values); defaults.rs, units.rs, env.rs, error.rs
//! snapshot.rs      everything built from one Config, held in one ArcSwap
//! control.rs       what the admin API and reloader share: snapshot, metrics, readiness
//! reload.rs        directory watch + SIGHUP -> debounce -> parse -> build -> swap
//! metrics.rs       every metric name; handles resolved per route/upstream/endpoint
//! proxy/mod.rs     the request path as one straight line
//! proxy/listener   accept loop, connection limits, header/idle timeouts, drain
//! proxy/correlate  ids, traceparent, forwarding and hop-by-hop headers
//! proxy/route      the route table (most specific wins)
//! proxy/admit      rate limits, concurrency shedding, fault injection
//! proxy/forward    the attempt loop: pick, breaker, send, classify, retry, fallback
//! proxy/body       streaming bodies: caps, replay for retries, idle timeouts,
//!                  the access-log hook
//! proxy/error      typed errors -> the contract's JSON / gRPC answers
//! upstream/mod.rs  upstreams and endpoints (state that survives reloads)
//! upstream/pool    per-endpoint connection pool (HTTP/1.1 stack, h2c shared)
//! upstream/balancer, breaker/, partition, retry, health, dns
//! admin/           the admin listener: metrics, breakers, health, config
//! access_log.rs    one JSON line per request, buffered
//! otel/            OpenTelemetry traces: sampling, server/attempt spans, OTLP export
//! telemetry.rs     tracing subscriber (JSON or text)
//! demo.rs          demo upstreams and `fusebox demo`
//! ```
//!
//! # The request path
//!
//! ```text
//! accept (listener: HTTP/1.1 + h2c)
//!   -> correlate (ids, traceparent, X-Forwarded-*, hop-by-hop strip)
//!   -> route (host, path prefix, method, headers; most specific wins)
//!   -> admit (declared body size, rate limit, concurrency, fault injection)
//!   -> attempt loop, bounded by the route deadline:
//!        pick endpoint (balancer skips open breakers) -> breaker admit -> pooled
//!        connection -> send (per-attempt timeout capped by the time left) ->
//!        classify -> record on breaker -> retry? (policy, budget, backoff, another
//!        endpoint, replayed body)
//!   -> fallback (static answer or a second upstream)
//!   -> respond (ids echoed; metrics; the access-log line when the body is done)
//! ```

pub mod access_log;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod otel;
pub mod proxy;
pub mod reload;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
