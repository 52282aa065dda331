//! The HTTP/1.1 and HTTP/2 JSON push API (docs/http.md, docs/openapi.yaml): its own listener and
//! small tokio runtime (one per node), JWT auth per app, and a [`Backend`] it pushes through.
//!
//! ```text
//!  curl / backend ──HTTP/1.1 or h2──▶ server ─▶ http1 (hyper) ─▶ routes ──▶ Backend::push ──▶ router
//!                                            └▶ http2 (h2) ───┘
//!                  ◀──JSON / SSE────                 ◀── done(outcomes) ◀──────────
//! ```

mod activity;
pub mod auth;
pub mod backend;
mod batch;
mod detect;
mod http1;
mod http2;
pub mod json;
mod routes;
pub mod server;
mod sse;
mod topics;

pub use backend::{Backend, Done, FeedbackPage, Note, Outcome, PushJob};
pub use http2::date;
pub use server::{start, start_configured, start_with_metrics, HttpServer};
