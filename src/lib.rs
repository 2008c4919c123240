pub mod cloud;
pub mod crd;
