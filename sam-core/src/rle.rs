//! Binary masks as run-length encodings and their boxes.
//!
//! Runs are **row-major** (linear index `y * width + x`), unlike COCO's column-major counts: fusion paints runs
//! straight into row-major label maps. [`Rle::to_coco_counts`] converts for clients that expect COCO.

/// `len` set pixels starting at linear index `start` (row-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u32,
    pub len: u32,
}

/// A binary mask: sorted, non-empty, non-touching runs over a `width` x `height` image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub width: u32,
    pub height: u32,
    pub runs: Vec<Run>,
}

/// Box around a mask, inclusive pixel coordinates as SAM's `batched_mask_to_box`; `[0,0,0,0]` for an empty mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BoxXyxy {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl BoxXyxy {
    /// Area as torchvision computes it for NMS: `(x1 - x0) * (y1 - y0)`, so a one-pixel box has area 0.
    pub fn nms_area(&self) -> f32 {
        (self.x1 - self.x0) as f32 * (self.y1 - self.y0) as f32
    }
}

impl Rle {
    pub fn from_bitmap(bitmap: &[bool], width: u32, height: u32) -> Self {
        assert_eq!(bitmap.len(), (width * height) as usize, "bitmap size");
        let mut builder = RleBuilder::new(width, height);
        let mut start = None;
        for (i, &set) in bitmap.iter().enumerate() {
            match (set, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    builder.push(s as u32, (i - s) as u32);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            builder.push(s as u32, (bitmap.len() - s) as u32);
        }
        builder.finish()
    }

    pub fn to_bitmap(&self) -> Vec<bool> {
        let mut bitmap = vec![false; (self.width * self.height) as usize];
        for run in &self.runs {
            bitmap[run.start as usize..(run.start + run.len) as usize].fill(true);
        }
        bitmap
    }

    pub fn area(&self) -> u32 {
        self.runs.iter().map(|r| r.len).sum()
    }

    pub fn contains(&self, x: u32, y: u32) -> bool {
        let index = y * self.width + x;
        let after = self.runs.partition_point(|r| r.start <= index);
        after > 0 && index < self.runs[after - 1].start + self.runs[after - 1].len
    }

    pub fn bbox(&self) -> BoxXyxy {
        let (Some(first), Some(last)) = (self.runs.first(), self.runs.last()) else {
            return BoxXyxy::default();
        };
        let w = self.width;
        let (mut x0, mut x1) = (u32::MAX, 0);
        for run in &self.runs {
            let (start_row, end_row) = (run.start / w, (run.start + run.len - 1) / w);
            if start_row == end_row {
                x0 = x0.min(run.start % w);
                x1 = x1.max((run.start + run.len - 1) % w);
            } else {
                // A run over a row end covers the end of one row and the start of the next: every column.
                x0 = 0;
                x1 = w - 1;
            }
        }
        BoxXyxy {
            x0,
            y0: first.start / w,
            x1,
            y1: (last.start + last.len - 1) / w,
        }
    }

    /// COCO-style uncompressed counts (column-major, starting with the number of unset pixels).
    pub fn to_coco_counts(&self) -> Vec<u32> {
        let bitmap = self.to_bitmap();
        let (w, h) = (self.width as usize, self.height as usize);
        let mut counts = Vec::new();
        let mut current = false;
        let mut count = 0u32;
        for x in 0..w {
            for y in 0..h {
                if bitmap[y * w + x] != current {
                    counts.push(count);
                    current = !current;
                    count = 0;
                }
                count += 1;
            }
        }
        counts.push(count);
        counts
    }
}

/// Builds an [`Rle`] from runs pushed in increasing order, merging runs that touch.
#[derive(Debug)]
pub struct RleBuilder {
    rle: Rle,
}

impl RleBuilder {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            rle: Rle {
                width,
                height,
                runs: Vec::new(),
            },
        }
    }

    pub fn push(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.rle.runs.last_mut() {
            debug_assert!(start >= last.start + last.len, "runs pushed out of order");
            if last.start + last.len == start {
                last.len += len;
                return;
            }
        }
        self.rle.runs.push(Run { start, len });
    }

    pub fn finish(self) -> Rle {
        self.rle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(rows: &[&str]) -> (Vec<bool>, u32, u32) {
        let bits = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        (bits, rows[0].len() as u32, rows.len() as u32)
    }

    #[test]
    fn round_trips_and_measures_a_mask() {
        let (bits, w, h) = bitmap(&["....", ".##.", "###.", "...#"]);
        let rle = Rle::from_bitmap(&bits, w, h);
        assert_eq!(
            rle.runs,
            vec![
                Run { start: 5, len: 2 },
                Run { start: 8, len: 3 },
                Run { start: 15, len: 1 }
            ]
        );
        assert_eq!(rle.to_bitmap(), bits);
        assert_eq!(rle.area(), 6);
        assert_eq!(
            rle.bbox(),
            BoxXyxy {
                x0: 0,
                y0: 1,
                x1: 3,
                y1: 3
            }
        );
        assert!(
            rle.contains(1, 1) && rle.contains(3, 3) && !rle.contains(3, 2) && !rle.contains(0, 0)
        );
    }

    #[test]
    fn runs_wrapping_rows_give_full_width_boxes() {
        let (bits, w, h) = bitmap(&["..##", "#...", "...."]);
        let rle = Rle::from_bitmap(&bits, w, h);
        assert_eq!(rle.runs, vec![Run { start: 2, len: 3 }]);
        assert_eq!(
            rle.bbox(),
            BoxXyxy {
                x0: 0,
                y0: 0,
                x1: 3,
                y1: 1
            }
        );
        let empty = Rle::from_bitmap(&[false; 4], 2, 2);
        assert_eq!(empty.bbox(), BoxXyxy::default());
        assert_eq!(empty.area(), 0);
    }

    #[test]
    fn coco_counts_are_column_major_and_start_unset() {
        // Columns top to bottom: col0 = [0,1], col1 = [1,1] -> 0 | 1 1 1 -> counts [1, 3].
        let (bits, w, h) = bitmap(&[".#", "##"]);
        assert_eq!(Rle::from_bitmap(&bits, w, h).to_coco_counts(), vec![1, 3]);
        let (bits, w, h) = bitmap(&["#.", ".."]);
        assert_eq!(
            Rle::from_bitmap(&bits, w, h).to_coco_counts(),
            vec![0, 1, 3]
        );
    }

    #[test]
    fn builder_merges_touching_runs() {
        let mut builder = RleBuilder::new(4, 2);
        builder.push(0, 2);
        builder.push(2, 1);
        builder.push(5, 0);
        builder.push(6, 2);
        assert_eq!(
            builder.finish().runs,
            vec![Run { start: 0, len: 3 }, Run { start: 6, len: 2 }]
        );
    }
}
