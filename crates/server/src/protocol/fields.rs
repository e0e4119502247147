//! Request field names, written once: a wire request struct is declared through
//! [`wire_fields!`], which also lists its fields with their [`Tag`]s. The rules that look at
//! keys rather than values (dialect and flavor detection, the keys a chat request may not carry,
//! the fuzzers' field lists) read that list; the OpenAPI document comes from the same struct's
//! `utoipa::ToSchema` derive. Adding a field is one line in the struct plus its rule.

/// What a field's key means beyond its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// Present, even as `null`: a legacy Friendli client, which gets the legacy stream
    /// dialect (friendli-client sends every key, friendli 0.3.x always the beam keys).
    Legacy,
    /// Not `null`: an OpenAI-flavoured request (validation errors are 400, not 422).
    OpenAi,
    /// A completions field with no meaning in a chat request (rejected there when set).
    NotChat,
}

/// One field of a wire request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireField {
    /// The JSON key.
    pub name: &'static str,
    pub tags: &'static [Tag],
}

/// Declares a wire request struct (every field `pub`, one per line, optionally preceded by
/// `[Tag, ...]` after its attributes) and `FIELDS`, its fields with their tags in order.
macro_rules! wire_fields {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $([$($tag:ident),+])?
                pub $field:ident: $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Every field, in declaration order, with its tags.
            pub const FIELDS: &'static [$crate::protocol::WireField] = &[
                $($crate::protocol::WireField {
                    name: stringify!($field),
                    tags: &[$($($crate::protocol::Tag::$tag),+)?],
                },)*
            ];

            /// Every field's key.
            pub fn field_names() -> impl Iterator<Item = &'static str> + Clone {
                Self::FIELDS.iter().map(|f| f.name)
            }

            /// The keys of the fields tagged `tag`.
            pub fn tagged(
                tag: $crate::protocol::Tag,
            ) -> impl Iterator<Item = &'static str> + Clone {
                Self::FIELDS
                    .iter()
                    .filter(move |f| f.tags.contains(&tag))
                    .map(|f| f.name)
            }
        }
    };
}

pub(crate) use wire_fields;
