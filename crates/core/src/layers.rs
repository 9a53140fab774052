//! `layers: all | [i, j, ...]`, the layer selection that several stages take as a param.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Which `layer_<i>` taps or columns to use: every one (`all`) or the listed indices
/// (0 = the embedding output, i = the output of block i). Serialized as the string `"all"` or a
/// list, so that canonical params (and cache keys) read the way the pipeline file does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Layers {
    #[default]
    All,
    List(Vec<usize>),
}

impl Serialize for Layers {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Layers::All => s.serialize_str("all"),
            Layers::List(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Layers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Layers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`all` or a list of layer indices such as [0, 8, 16]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Layers, E> {
                if v == "all" {
                    Ok(Layers::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Layers, A::Error> {
                let mut v = Vec::new();
                while let Some(i) = seq.next_element::<usize>()? {
                    v.push(i);
                }
                Ok(Layers::List(v))
            }
        }
        d.deserialize_any(V)
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
}
