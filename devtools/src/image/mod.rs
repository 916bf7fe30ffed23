//! Container images built without an image builder or a registry: [`oci`] writes OCI image
//! layouts (as tar archives) of given layers and configs, reproducibly; [`agent`] makes the
//! sitecache image from a binary and the Dockerfile's final stage. The real node's images and a
//! release's image are made with them.

pub mod agent;
pub mod oci;
