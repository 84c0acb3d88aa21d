//! Ianvs-style index files: one `image label` pair per line, paths relative to the index file's parent folder
//! (CamVid's `index/*.txt` are relative to the dataset root, one level up), `#` comments and blank lines ignored.

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read index {path}: {source}")]
    Index {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `image label` (or a lone `image`), got {text:?}")]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("index {0} lists no samples")]
    Empty(PathBuf),
    #[error("cannot load {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{image} is {image_size:?} but its label {label} is {label_size:?}")]
    SizeMismatch {
        image: PathBuf,
        label: PathBuf,
        image_size: (u32, u32),
        label_size: (u32, u32),
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub image: PathBuf,
    /// Absent for unlabelled streams.
    pub label: Option<PathBuf>,
}

impl Sample {
    /// A stable name for reports: the image file name without extension.
    pub fn name(&self) -> String {
        self.image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn load_image(&self) -> Result<RgbImage, DatasetError> {
        image::open(&self.image)
            .map(|i| i.to_rgb8())
            .map_err(|e| DatasetError::Load {
                path: self.image.clone(),
                message: e.to_string(),
            })
    }

    /// Loads the image and its label map, checking they have the same size.
    pub fn load_labelled(&self) -> Result<(RgbImage, GrayImage), DatasetError> {
        let image = self.load_image()?;
        let label_path = self.label.as_ref().ok_or_else(|| DatasetError::Load {
            path: self.image.clone(),
            message: "the index gives no label for this image".into(),
        })?;
        let label =
            image::open(label_path)
                .map(|i| i.to_luma8())
                .map_err(|e| DatasetError::Load {
                    path: label_path.clone(),
                    message: e.to_string(),
                })?;
        if image.dimensions() != label.dimensions() {
            return Err(DatasetError::SizeMismatch {
                image: self.image.clone(),
                label: label_path.clone(),
                image_size: image.dimensions(),
                label_size: label.dimensions(),
            });
        }
        Ok((image, label))
    }
}

/// Reads an index file. Relative paths resolve against `root` when given, else against the index's grandparent
/// when the index sits in an `index/` folder (CamVid's layout), else against the index's own folder.
pub fn read_index(path: &Path, root: Option<&Path>) -> Result<Vec<Sample>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Index {
        path: path.to_path_buf(),
        source,
    })?;
    let base = match root {
        Some(root) => root.to_path_buf(),
        None => default_root(path),
    };
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (image, label) = match fields.as_slice() {
            [image] => (*image, None),
            [image, label] => (*image, Some(*label)),
            _ => {
                return Err(DatasetError::Syntax {
                    path: path.to_path_buf(),
                    line: number + 1,
                    text: line.to_string(),
                });
            }
        };
        samples.push(Sample {
            image: base.join(image),
            label: label.map(|l| base.join(l)),
        });
    }
    if samples.is_empty() {
        return Err(DatasetError::Empty(path.to_path_buf()));
    }
    Ok(samples)
}

fn default_root(index: &Path) -> PathBuf {
    let parent = index.parent().unwrap_or(Path::new("."));
    if parent.file_name().is_some_and(|n| n == "index") {
        parent.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

/// Writes an index file with paths relative to `root` where possible.
pub fn write_index(path: &Path, samples: &[Sample], root: &Path) -> std::io::Result<()> {
    let rel = |p: &Path| {
        p.strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let mut text = String::new();
    for sample in samples {
        text.push_str(&rel(&sample.image));
        if let Some(label) = &sample.label {
            text.push(' ');
            text.push_str(&rel(label));
        }
        text.push('\n');
    }
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lines_resolve_against_the_dataset_root() {
        let dir = std::env::temp_dir().join(format!("index-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("index")).unwrap();
        let index = dir.join("index/split.txt");
        std::fs::write(
            &index,
            "# comment\ntrain/a.png trainannot/a.png\n\nval/b.png\n",
        )
        .unwrap();
        let samples = read_index(&index, None).unwrap();
        assert_eq!(samples[0].image, dir.join("train/a.png"));
        assert_eq!(
            samples[0].label.as_deref(),
            Some(dir.join("trainannot/a.png").as_path())
        );
        assert_eq!(samples[1].label, None);
        assert_eq!(samples[1].name(), "b");

        std::fs::write(&index, "a b c\n").unwrap();
        assert!(matches!(
            read_index(&index, None),
            Err(DatasetError::Syntax { line: 1, .. })
        ));
        std::fs::write(&index, "\n# nothing\n").unwrap();
        assert!(matches!(
            read_index(&index, None),
            Err(DatasetError::Empty(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
