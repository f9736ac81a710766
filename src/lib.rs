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
//! app.rs           wiring: snapshot, bind, serve, shutdown; start() for tests
//! config/          file.rs (serde mirror) -> validate.rs -> types.rs (valid values)
//! snapshot.rs      everything built from one Config, held in one ArcSwap
//! proxy/mod.rs     the request path as one straight line
//! proxy/listener   accept loop, connection limits, graceful drain
//! proxy/correlate  ids, traceparent, forwarding and hop-by-hop headers
//! proxy/route      the route table (most specific wins)
//! proxy/forward    the attempt loop: pick, send, classify
//! proxy/body       streaming bodies with caps, idle timeouts and the access-log hook
//! proxy/error      typed errors -> the contract's JSON / gRPC answers
//! upstream/        endpoints, balancer, pooled client, DNS refresh
//! access_log.rs    one JSON line per request, buffered
//! telemetry.rs     tracing subscriber (JSON or text)
//! demo.rs          demo upstreams and `fusebox demo`
//! ```
//!
//! # The request path
//!
//! ```text
//! accept (listener: HTTP/1.1 + h2c)
//!   -> correlate (ids, traceparent, X-Forwarded-*, hop-by-hop strip)
//!   -> admit (declared body size)
//!   -> route (host, path prefix, method, headers; most specific wins)
//!   -> forward: pick endpoint -> pooled connection -> send (per-attempt timeout
//!      capped by the route deadline) -> classify
//!   -> respond (ids echoed; the access-log line is written when the body is done)
//! ```

pub mod access_log;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;
