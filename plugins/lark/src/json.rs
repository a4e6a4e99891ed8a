//! Lenient, borrowing JSON readers for the hot paths (webhook probe, event envelope, message
//! content).
//!
//! Lark payloads are read in one pass into small typed structs whose strings borrow from the
//! input (a [`Cow`] is owned only when the JSON string contains escapes). The readers are
//! lenient the way the rest of the plugin is: a field of an unexpected JSON type reads as absent
//! (it is consumed, never an error), so one odd field degrades the output instead of failing the
//! event. Only invalid JSON fails a parse, judged as a parse into a `serde_json::Value` judges
//! it, so switching a reader from `Value` to these types changes no accept/reject decision.
//!
//! - [`JsonStr`]: a JSON string; anything else is absent.
//! - [`Scalar`]: a string, or a number as `serde_json` prints it.
//! - [`Millis`]: an integer given as a number or a numeric string.
//! - [`Obj`]: an object read field by field through [`ObjectFields`] (declared with
//!   [`json_object!`]); a later duplicate key replaces an earlier one, and any value that is not
//!   an object reads as the default (no fields).
//! - [`List`]: an array of lenient elements; anything else is empty.
//! - [`Skip`]: any value, dropped after the same validation a full parse does.
//!
//! `visit_rest_as!` writes the "anything else" arms of the readers' visitors.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// Implements the `visit_*` methods of a [`Visitor`] that build `$default` for the JSON values
/// the visitor does not handle itself. Sequences and maps are consumed element by element as
/// `$skip` ([`Skip`] to validate them as a full parse would, or serde's `IgnoredAny`).
macro_rules! visit_rest_as {
    ($skip:ty => $default:expr; $($kind:ident),*) => {
        $($crate::json::visit_rest_as!(@one $kind, $skip, $default);)*
    };
    (@one bool, $skip:ty, $default:expr) => {
        fn visit_bool<E: ::serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($default)
        }
    };
    (@one i64, $skip:ty, $default:expr) => {
        fn visit_i64<E: ::serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($default)
        }
    };
    (@one u64, $skip:ty, $default:expr) => {
        fn visit_u64<E: ::serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($default)
        }
    };
    (@one f64, $skip:ty, $default:expr) => {
        fn visit_f64<E: ::serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($default)
        }
    };
    (@one str, $skip:ty, $default:expr) => {
        fn visit_str<E: ::serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($default)
        }
    };
    (@one unit, $skip:ty, $default:expr) => {
        fn visit_unit<E: ::serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($default)
        }
    };
    (@one seq, $skip:ty, $default:expr) => {
        fn visit_seq<A: ::serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<$skip>()?.is_some() {}
            Ok($default)
        }
    };
    (@one map, $skip:ty, $default:expr) => {
        fn visit_map<A: ::serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map.next_entry::<$skip, $skip>()?.is_some() {}
            Ok($default)
        }
    };
}
pub(crate) use visit_rest_as;

/// A JSON string (borrowed when it has no escapes); any other JSON value is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JsonStr<'a>(pub Option<Cow<'a, str>>);

impl<'a> JsonStr<'a> {
    /// The string, or `""` when absent.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = JsonStr<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Some(Cow::Borrowed(value))))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Some(Cow::Owned(value.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Some(Cow::Owned(value))))
            }
            visit_rest_as!(Skip => JsonStr(None); bool, i64, u64, f64, unit, seq, map);
        }

        deserializer.deserialize_any(StrVisitor(PhantomData))
    }
}

/// A JSON string, or a number as `serde_json` prints it (`31.23`, `-5`); anything else is "".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scalar<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
            type Value = Scalar<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Scalar(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(Scalar(Cow::Owned(value)))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(Scalar(Cow::Owned(Number::from(value).to_string())))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(Scalar(Cow::Owned(Number::from(value).to_string())))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(Scalar(Cow::Owned(
                    Number::from_f64(value)
                        .map(|number| number.to_string())
                        .unwrap_or_default(),
                )))
            }
            visit_rest_as!(Skip => Scalar::default(); bool, unit, seq, map);
        }

        deserializer.deserialize_any(ScalarVisitor(PhantomData))
    }
}

/// An integer (milliseconds) given as a JSON number (floats truncate, integers beyond `i64`
/// saturate) or as a string holding a decimal integer; anything else is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Millis(pub Option<i64>);

impl Millis {
    fn of_number(number: &Number) -> Self {
        Millis(
            number
                .as_i64()
                .or_else(|| number.as_f64().map(|float| float as i64)),
        )
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MillisVisitor;

        impl<'de> Visitor<'de> for MillisVisitor {
            type Value = Millis;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Millis(value.trim().parse().ok()))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(Millis::of_number(&Number::from(value)))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(Millis::of_number(&Number::from(value)))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(Number::from_f64(value)
                    .map(|number| Millis::of_number(&number))
                    .unwrap_or_default())
            }
            visit_rest_as!(Skip => Millis(None); bool, unit, seq, map);
        }

        deserializer.deserialize_any(MillisVisitor)
    }
}

/// Whether a key is present, whatever its value (`null` included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Present(pub bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Skip::deserialize(deserializer).map(|_| Present(true))
    }
}

/// Any JSON value, read and dropped. Unlike serde's `IgnoredAny` it is validated as a parse into
/// a `serde_json::Value` would be (numbers within `f64` range, string escapes, nesting depth),
/// so a lenient reader accepts exactly the documents a `Value` parse accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;

        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = Skip;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_none<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Skip, D::Error> {
                Skip::deserialize(deserializer)
            }
            visit_rest_as!(Skip => Skip; bool, i64, u64, f64, str, unit, seq, map);
        }

        deserializer.deserialize_any(SkipVisitor)
    }
}

/// A JSON array of lenient elements; any other value is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
            type Value = List<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List(items))
            }
            visit_rest_as!(Skip => List::default(); bool, i64, u64, f64, str, unit, map);
        }

        deserializer.deserialize_any(ListVisitor(PhantomData))
    }
}

/// A struct read from a JSON object field by field (see [`json_object!`]).
pub(crate) trait ObjectFields<'de>: Default {
    /// The JSON keys of the fields, in declaration order.
    const FIELDS: &'static [&'static str];

    /// Reads the value of field number `index` (of [`Self::FIELDS`]) from `map`.
    fn read_field<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error>;
}

/// Reads the fields of an object into `fields`: known keys through
/// [`ObjectFields::read_field`] (a duplicate replaces the earlier value, as in a
/// `serde_json::Value`), unknown keys skipped.
fn read_object<'de, T: ObjectFields<'de>, A: MapAccess<'de>>(
    fields: &mut T,
    map: &mut A,
) -> Result<(), A::Error> {
    while let Some(index) = map.next_key_seed(KeyIndex(T::FIELDS))? {
        match index {
            Some(index) => fields.read_field(index, map)?,
            None => {
                map.next_value::<Skip>()?;
            }
        }
    }
    Ok(())
}

/// A leniently read object: the fields of a JSON object, or the default for any other value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Obj<T>(pub T);

impl<'de, T: ObjectFields<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MaybeObj::deserialize(deserializer).map(|object| Obj(object.0.unwrap_or_default()))
    }
}

/// The fields of a JSON object, or `None` for any other JSON value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MaybeObj<T>(pub Option<T>);

impl<'de, T: ObjectFields<'de>> Deserialize<'de> for MaybeObj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjVisitor<T>(PhantomData<T>);

        impl<'de, T: ObjectFields<'de>> Visitor<'de> for ObjVisitor<T> {
            type Value = MaybeObj<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = T::default();
                read_object(&mut fields, &mut map)?;
                Ok(MaybeObj(Some(fields)))
            }
            visit_rest_as!(Skip => MaybeObj(None); bool, i64, u64, f64, str, unit, seq);
        }

        deserializer.deserialize_any(ObjVisitor(PhantomData))
    }
}

/// Declares a struct read from a JSON object by [`Obj`]: each field is given with its JSON key;
/// field types must be lenient (`Deserialize` for any JSON value) and `Default`. The struct may
/// have one lifetime, that of the borrowed input. Other keys are skipped as [`Skip`].
macro_rules! json_object {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident<$lt:lifetime> {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty = $key:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Default)]
        $vis struct $name<$lt> {
            $($(#[$field_meta])* $field: $ty,)+
        }

        impl<$lt> $crate::json::ObjectFields<$lt> for $name<$lt> {
            $crate::json::json_object!(@fields $lt; $($field = $key),+);
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty = $key:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Default)]
        $vis struct $name {
            $($(#[$field_meta])* $field: $ty,)+
        }

        impl<'de> $crate::json::ObjectFields<'de> for $name {
            $crate::json::json_object!(@fields 'de; $($field = $key),+);
        }
    };
    (@fields $lt:lifetime; $($field:ident = $key:literal),+) => {
        const FIELDS: &'static [&'static str] = &[$($key),+];

        fn read_field<A: ::serde::de::MapAccess<$lt>>(
            &mut self,
            index: usize,
            map: &mut A,
        ) -> Result<(), A::Error> {
            let mut field = 0;
            $(
                if index == field {
                    self.$field = map.next_value()?;
                    return Ok(());
                }
                field += 1;
            )+
            let _ = field;
            map.next_value::<$crate::json::Skip>().map(|_| ())
        }
    };
}
pub(crate) use json_object;

/// Reads an object key as its index in a field list (`None` for other keys) without allocating.
struct KeyIndex(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyIndex {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|name| *name == key))
    }
}

/// A borrowed-or-owned object key (owned only when the key contains escapes).
pub(crate) struct Key<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
            type Value = Key<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(value)))
            }
        }

        deserializer.deserialize_str(KeyVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    json_object! {
        struct Sample<'a> {
            text: JsonStr<'a> = "text",
            amount: Scalar<'a> = "amount",
            when: Millis = "when",
            tags: List<JsonStr<'a>> = "tags",
        }
    }

    fn sample(json: &str) -> Sample<'_> {
        serde_json::from_str::<Obj<Sample<'_>>>(json).unwrap().0
    }

    #[test]
    fn fields_are_lenient_and_borrowed() {
        let value = sample(r#"{"text":"hi","amount":31.23,"when":"  42 ","tags":["a",1,"b"]}"#);
        assert!(matches!(value.text.0, Some(Cow::Borrowed("hi"))));
        assert_eq!(value.amount.0, "31.23");
        assert_eq!(value.when, Millis(Some(42)));
        assert_eq!(
            value.tags.0.iter().map(JsonStr::as_str).collect::<Vec<_>>(),
            ["a", "", "b"]
        );
        let odd = sample(r#"{"text":5,"amount":[1],"when":1.9e3,"tags":{"a":1},"x":{"y":[]}}"#);
        assert_eq!(odd.text.0, None);
        assert_eq!(odd.amount.0, "");
        assert_eq!(odd.when, Millis(Some(1900)));
        assert!(odd.tags.0.is_empty());
    }

    #[test]
    fn escaped_strings_are_owned_and_duplicates_replace() {
        let value = sample(r#"{"te\u0078t":"a\nb","text":"last","amount":-5,"when":1e30}"#);
        assert_eq!(value.text.as_str(), "last");
        assert_eq!(value.amount.0, "-5");
        assert_eq!(value.when, Millis(Some(i64::MAX)));
        let escaped = sample(r#"{"text":"a\nb"}"#);
        assert!(matches!(escaped.text.0, Some(Cow::Owned(ref text)) if text == "a\nb"));
    }

    #[test]
    fn non_objects_read_as_defaults_but_syntax_errors_fail() {
        for json in ["[1,2]", "\"s\"", "null", "5", "true"] {
            assert_eq!(sample(json).text.0, None, "{json}");
        }
        assert!(serde_json::from_str::<Obj<Sample<'_>>>("{\"text\":").is_err());
        assert!(serde_json::from_str::<Obj<Sample<'_>>>("{} x").is_err());
    }

    #[test]
    fn presence_counts_null() {
        json_object! {
            struct Keys<'a> {
                schema: Present = "schema",
                name: JsonStr<'a> = "name",
            }
        }
        let keys = serde_json::from_str::<Obj<Keys<'_>>>(r#"{"schema":null}"#)
            .unwrap()
            .0;
        assert!(keys.schema.0);
        assert_eq!(keys.name.0, None);
    }
}
