//! Refuses duplicate keys at any depth. JSON allows them and serde_json keeps
//! the last one silently, so two `"production"` entries would make the second
//! win without a word. A pass over the text before the typed parse finds the
//! first duplicate and names its JSON path and line.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::ConfigError;

/// The duplicate found: the path of the object holding it and the key.
type Found = RefCell<Option<(String, String)>>;

struct Walk<'a> {
    path: String,
    found: &'a Found,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key.clone()) {
                *self.found.borrow_mut() = Some((self.path.clone(), key));
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Walk {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }
}

/// `Err` naming the first duplicate key; any other problem (bad syntax) is
/// left to the typed parse, which reports it with the field's path.
pub(crate) fn check(file: &Path, text: &str) -> Result<(), ConfigError> {
    let found = Found::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let result = Walk {
        path: String::new(),
        found: &found,
    }
    .deserialize(&mut de);
    let Err(e) = result else {
        return Ok(());
    };
    let Some((parent, key)) = found.into_inner() else {
        return Ok(());
    };
    let path = if parent.is_empty() {
        key.clone()
    } else {
        format!("{parent}.{key}")
    };
    let within = if parent.is_empty() {
        "the top-level object".to_string()
    } else {
        parent
    };
    Err(ConfigError::new(
        file,
        path,
        format!(
            "duplicate key {key:?} in {within} (second one at line {}): JSON readers keep only one of them silently, so remove or rename one",
            e.line()
        ),
    ))
}
