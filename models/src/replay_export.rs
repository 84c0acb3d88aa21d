//! The on-disk layout of a replay-buffer export, shared by the writer (`cloud-infer export-index`) and the reader
//! (the retraining job), so neither has to link the other.
//!
//! An export directory holds `index.txt` with one `images/<id>.<ext> labels/<id>.png` line per entry (oldest
//! first), where `<id>` is the sha256 of the image bytes and the label is the cloud's (SAM-refined) label map.

/// The index file inside an export directory.
pub const INDEX_FILE: &str = "index.txt";

/// First line of every exported index.
pub const INDEX_HEADER: &str = "# exported from the cloud-infer replay buffer: image cloud-label";

/// Path of an entry's image, relative to the export directory.
pub fn image_path(id: &str, extension: &str) -> String {
    format!("images/{id}.{extension}")
}

/// Path of an entry's cloud label map, relative to the export directory.
pub fn cloud_label_path(id: &str) -> String {
    format!("labels/{id}.png")
}

/// One index line (without the newline).
pub fn index_line(id: &str, extension: &str) -> String {
    format!("{} {}", image_path(id, extension), cloud_label_path(id))
}

/// Whether a file stem is an entry id (a lowercase hex sha256), so a reader can check the image against it.
pub fn is_entry_id(stem: &str) -> bool {
    stem.len() == 64 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_image_and_cloud_label_by_id() {
        let id = "ab".repeat(32);
        assert!(is_entry_id(&id));
        assert!(!is_entry_id("0001TP_006690"));
        assert_eq!(
            index_line(&id, "jpg"),
            format!("images/{id}.jpg labels/{id}.png")
        );
    }
}
