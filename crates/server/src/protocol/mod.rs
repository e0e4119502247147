//! Wire types of the HTTP API: serde structs and enums only, no logic. They are not engine types
//! (`validate` converts requests into `cordial_engine::EngineRequest`s).

pub mod chat;
mod fields;
pub mod request;
pub mod response;
pub mod stream;
pub mod tokenize;

pub use chat::*;
pub use fields::{Tag, WireField};
pub use request::*;
pub use response::*;
pub use stream::*;
pub use tokenize::*;
