//! cloudimage-operator: deletes a cloud VM image when its CloudImage is deleted.

pub mod admin;
pub mod cli;
pub mod cloud;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod run;
