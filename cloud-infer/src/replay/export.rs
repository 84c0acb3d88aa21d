//! Export to an Ianvs-style dataset: `images/`, `labels/` (the cloud label maps) and `index.txt` with one
//! `images/<id>.<ext> labels/<id>.png` line per entry, relative to the index (as `models::dataset::read_index` reads).

use std::fs;
use std::path::{Path, PathBuf};

use models::replay_export::{INDEX_FILE, INDEX_HEADER, cloud_label_path, image_path, index_line};

use super::{Part, ReplayError, ReplayStore};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub index: PathBuf,
    pub entries: usize,
}

pub fn export_index(store: &dyn ReplayStore, out: &Path) -> Result<ExportSummary, ReplayError> {
    let images = out.join("images");
    let labels = out.join("labels");
    for dir in [&images, &labels] {
        fs::create_dir_all(dir).map_err(|e| ReplayError::io(dir.display(), e))?;
    }
    let records = store.entries()?;
    let mut index = format!("{INDEX_HEADER}\n");
    for record in &records {
        let image_name = image_path(&record.id, &record.image_extension);
        let label_name = cloud_label_path(&record.id);
        for (name, part) in [(&image_name, Part::Image), (&label_name, Part::CloudLabels)] {
            let path = out.join(name);
            fs::write(&path, store.read(record, part)?)
                .map_err(|e| ReplayError::io(path.display(), e))?;
        }
        index.push_str(&index_line(&record.id, &record.image_extension));
        index.push('\n');
    }
    let index_path = out.join(INDEX_FILE);
    // Written last and renamed into place: a reader (the retraining job) never sees a half-written index.
    let temp = out.join(format!("{INDEX_FILE}.tmp"));
    fs::write(&temp, index).map_err(|e| ReplayError::io(temp.display(), e))?;
    fs::rename(&temp, &index_path).map_err(|e| ReplayError::io(index_path.display(), e))?;
    Ok(ExportSummary {
        index: index_path,
        entries: records.len(),
    })
}
