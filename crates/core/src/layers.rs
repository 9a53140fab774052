//! `layers: all | [i, j, ...]`, the layer selection that several stages take as a param, and
//! its resolution against the layers a model or a table has.

use std::fmt::Display;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Which `layer_<i>` taps or columns to use: every one (`all`) or the listed indices
/// (0 = the embedding output, i = the output of block i). Serialized as the string `"all"` or a
/// list, so that canonical params (and cache keys) read the way the pipeline file does.
///
/// The index type says what a list may hold: `usize` (the default: `extract`, `layer_sweep`)
/// takes layer numbers only; `i64` (`fuse`) also takes negative indices, which count from the
/// highest layer that is there (`-1` = the highest). [`Layers::resolve`] turns either into layer
/// numbers against what a model or a table has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Layers<I = usize> {
    #[default]
    All,
    List(Vec<I>),
}

/// An index in a [`Layers`] list.
pub trait LayerIndex: Copy + Display {
    /// The layer this index names among `available` (layer numbers, ascending), if it is there.
    fn locate(self, available: &[usize]) -> Option<usize>;
}

impl LayerIndex for usize {
    fn locate(self, available: &[usize]) -> Option<usize> {
        available.contains(&self).then_some(self)
    }
}

impl LayerIndex for i64 {
    fn locate(self, available: &[usize]) -> Option<usize> {
        match usize::try_from(self) {
            Ok(i) => i.locate(available),
            Err(_) => {
                let back = usize::try_from(self.unsigned_abs()).ok()?;
                available.len().checked_sub(back).map(|k| available[k])
            }
        }
    }
}

impl<I: LayerIndex> Layers<I> {
    /// The layer numbers selected among `available` (the layers there are, ascending): all of
    /// them for `all`, else each listed index in list order. `Err` holds the first listed index
    /// that names no available layer.
    pub fn resolve(&self, available: &[usize]) -> std::result::Result<Vec<usize>, I> {
        debug_assert!(available.windows(2).all(|w| w[0] < w[1]), "ascending");
        match self {
            Layers::All => Ok(available.to_vec()),
            Layers::List(list) => list.iter().map(|&i| i.locate(available).ok_or(i)).collect(),
        }
    }
}

impl<I: Serialize> Serialize for Layers<I> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Layers::All => s.serialize_str("all"),
            Layers::List(v) => v.serialize(s),
        }
    }
}

impl<'de, I: Deserialize<'de>> Deserialize<'de> for Layers<I> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<I>(PhantomData<I>);
        impl<'de, I: Deserialize<'de>> Visitor<'de> for V<I> {
            type Value = Layers<I>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`all` or a list of layer indices such as [0, 8, 16]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Layers<I>, E> {
                if v == "all" {
                    Ok(Layers::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Layers<I>, A::Error> {
                let mut v = Vec::new();
                while let Some(i) = seq.next_element::<I>()? {
                    v.push(i);
                }
                Ok(Layers::List(v))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// In a params schema: the string `all`, or a list of layer indices.
impl<I: schemars::JsonSchema> schemars::JsonSchema for Layers<I> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Layers_{}", I::schema_name()).into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let index = generator.subschema_for::<I>();
        schemars::json_schema!({
            "description": "`all`, or a list of layer indices",
            "anyOf": [{"const": "all"}, {"type": "array", "items": index}]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_a_list_round_trips_and_rejects_the_rest() {
        let all: Layers = serde_json::from_str("\"all\"").unwrap();
        assert_eq!(all, Layers::All);
        assert_eq!(serde_json::to_string(&all).unwrap(), "\"all\"");
        let list: Layers = serde_json::from_str("[0, 8, 16]").unwrap();
        assert_eq!(list, Layers::List(vec![0, 8, 16]));
        assert_eq!(serde_json::to_string(&list).unwrap(), "[0,8,16]");
        for (bad, want) in [
            (
                "\"some\"",
                "invalid value: string \"some\", expected `all` or a list of layer indices",
            ),
            ("[-1]", "invalid value: integer `-1`, expected usize"),
            (
                "3",
                "invalid type: integer `3`, expected `all` or a list of layer indices",
            ),
            (
                "[1.5]",
                "invalid type: floating point `1.5`, expected usize",
            ),
        ] {
            let err = serde_json::from_str::<Layers>(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn negative_indices_parse_as_i64_and_serialize_back() {
        let l: Layers<i64> = serde_json::from_str("[6, -1]").unwrap();
        assert_eq!(l, Layers::List(vec![6, -1]));
        assert_eq!(serde_json::to_string(&l).unwrap(), "[6,-1]");
        let all: Layers<i64> = serde_json::from_str("\"all\"").unwrap();
        assert_eq!(serde_json::to_string(&all).unwrap(), "\"all\"");
    }

    #[test]
    fn resolve_counts_negative_indices_from_the_highest_layer_there() {
        // A table with layers 0, 4, 8 and 12 (a sparse tap list).
        let have = [0, 4, 8, 12];
        assert_eq!(Layers::<i64>::All.resolve(&have), Ok(have.to_vec()));
        assert_eq!(
            Layers::List(vec![-1i64, 4, -4]).resolve(&have),
            Ok(vec![12, 4, 0])
        );
        assert_eq!(Layers::List(vec![8i64, -5]).resolve(&have), Err(-5));
        assert_eq!(Layers::List(vec![3i64]).resolve(&have), Err(3));
        assert_eq!(
            Layers::List(vec![12usize, 0]).resolve(&have),
            Ok(vec![12, 0])
        );
        assert_eq!(Layers::List(vec![13usize]).resolve(&have), Err(13));
        assert_eq!(
            Layers::<i64>::List(vec![i64::MIN]).resolve(&have),
            Err(i64::MIN)
        );
    }
}
