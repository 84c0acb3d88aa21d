//! Class-set mappings as data: a JSON file maps every class of a source label set (e.g. Cityscapes' 19 trainIds)
//! to a class of the target set (CamVid's 11) or to the ignore label.

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ClassMapError {
    #[error("cannot read class map {path}: {message}")]
    Read { path: String, message: String },
    #[error("class map `{name}`: {reason}")]
    Invalid { name: String, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
struct ClassMapFile {
    name: String,
    source_classes: Vec<String>,
    target_classes: Vec<String>,
    /// Source class name -> target class name, or null for "ignore".
    mapping: std::collections::BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap {
    pub name: String,
    /// `table[source_id]` = target id, or `ignore` when the source class has no counterpart.
    table: Vec<u8>,
    pub ignore: u8,
}

impl ClassMap {
    pub fn load(path: &Path, ignore: u8) -> Result<Self, ClassMapError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClassMapError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_json(&text, ignore)
    }

    pub fn from_json(text: &str, ignore: u8) -> Result<Self, ClassMapError> {
        let file: ClassMapFile = serde_json::from_str(text).map_err(|e| ClassMapError::Read {
            path: "<json>".into(),
            message: e.to_string(),
        })?;
        let invalid = |reason: String| ClassMapError::Invalid {
            name: file.name.clone(),
            reason,
        };
        let mut table = Vec::with_capacity(file.source_classes.len());
        for source in &file.source_classes {
            let target = file.mapping.get(source).ok_or_else(|| {
                invalid(format!(
                    "source class `{source}` is not mapped (map it to null to ignore it)"
                ))
            })?;
            let id = match target {
                None => ignore,
                Some(name) => file
                    .target_classes
                    .iter()
                    .position(|t| t == name)
                    .ok_or_else(|| {
                        invalid(format!("`{source}` maps to unknown target class `{name}`"))
                    })? as u8,
            };
            table.push(id);
        }
        if let Some(extra) = file
            .mapping
            .keys()
            .find(|k| !file.source_classes.contains(k))
        {
            return Err(invalid(format!(
                "mapping names unknown source class `{extra}`"
            )));
        }
        Ok(Self {
            name: file.name,
            table,
            ignore,
        })
    }

    pub fn map(&self, source: u8) -> u8 {
        self.table
            .get(usize::from(source))
            .copied()
            .unwrap_or(self.ignore)
    }

    pub fn map_labels(&self, labels: &mut [u8]) {
        for l in labels {
            *l = self.map(*l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_cityscapes_map_covers_every_class() {
        let path =
            crate::paths::workspace_root().join("models/class-maps/cityscapes-to-camvid.json");
        let map = ClassMap::load(&path, 11).unwrap();
        assert_eq!(map.map(0), 3, "road -> Road");
        assert_eq!(map.map(10), 0, "sky -> Sky");
        assert_eq!(map.map(13), 8, "car -> Car");
        assert_eq!(map.map(16), 11, "train has no CamVid class");
        assert_eq!(map.map(200), 11, "out of range is ignored");
    }

    #[test]
    fn unknown_names_are_refused() {
        let json =
            r#"{"name":"t","source_classes":["a"],"target_classes":["x"],"mapping":{"a":"y"}}"#;
        assert!(matches!(
            ClassMap::from_json(json, 11),
            Err(ClassMapError::Invalid { .. })
        ));
        let json =
            r#"{"name":"t","source_classes":["a","b"],"target_classes":["x"],"mapping":{"a":"x"}}"#;
        assert!(matches!(
            ClassMap::from_json(json, 11),
            Err(ClassMapError::Invalid { .. })
        ));
    }
}
