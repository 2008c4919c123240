//! The controller: watches CloudImages, keeps their finalizer, reports what
//! the cloud says, and deletes the image when the object is deleted; and
//! holds the credentials Secrets while CloudImages need them.
//!
//! Modules import downward only. `reconcile` dispatches to the phases `live`
//! and `cleanup`; `guard` reconciles Secrets. The phases use `context` (what
//! reconciles share), the pure deciders (`plan`, `status`, `secret_hold`)
//! and `kube_io` (the Kubernetes writes). At the bottom are `problem`,
//! `reason`, `error`, `conditions`, `backoff` and `credentials`.

pub mod backoff;
pub mod cleanup;
pub mod conditions;
pub mod context;
pub mod credentials;
pub mod error;
pub mod events;
pub mod guard;
pub mod kube_io;
pub mod limit;
pub mod live;
pub mod pace;
pub mod plan;
pub mod problem;
pub mod reason;
pub mod reconcile;
pub mod secret_hold;
pub mod status;
