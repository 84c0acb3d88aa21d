//! Point grids and crop boxes, as SAM's `build_all_layer_point_grids` and `generate_crop_boxes`.

use crate::rle::BoxXyxy;

/// A crop of the original image in pixels, `x1`/`y1` exclusive (SAM's XYXY crop boxes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
    /// 0 for the whole image, `i` for the `(2^i)^2` crops of layer `i`.
    pub layer: usize,
}

impl CropBox {
    pub fn whole(width: u32, height: u32) -> Self {
        Self {
            x0: 0,
            y0: 0,
            x1: width,
            y1: height,
            layer: 0,
        }
    }

    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }

    pub fn area(&self) -> u64 {
        u64::from(self.width()) * u64::from(self.height())
    }
}

/// `n_per_side`² points evenly spaced in `[0,1]²`, cell centres, row by row (y outer, x inner).
pub fn build_point_grid(n_per_side: usize) -> Vec<[f32; 2]> {
    let offset = 1.0 / (2.0 * n_per_side as f64);
    let coordinate = |i: usize| -> f32 {
        if n_per_side == 1 {
            offset as f32
        } else {
            (offset + i as f64 * (1.0 - 2.0 * offset) / (n_per_side - 1) as f64) as f32
        }
    };
    (0..n_per_side)
        .flat_map(|row| (0..n_per_side).map(move |col| [coordinate(col), coordinate(row)]))
        .collect()
}

/// One grid per crop layer; layer `i` has `n_per_side / scale_per_layer^i` points per side.
pub fn build_all_layer_point_grids(
    n_per_side: usize,
    n_layers: usize,
    scale_per_layer: usize,
) -> Vec<Vec<[f32; 2]>> {
    (0..=n_layers)
        .map(|layer| build_point_grid(n_per_side / scale_per_layer.pow(layer as u32)))
        .collect()
}

/// The whole image, then `(2^(i+1))^2` overlapping crops for each layer `i < n_layers` (x outer, y inner).
pub fn generate_crop_boxes(
    width: u32,
    height: u32,
    n_layers: usize,
    overlap_ratio: f64,
) -> Vec<CropBox> {
    let mut boxes = vec![CropBox::whole(width, height)];
    let short_side = f64::from(width.min(height));
    let crop_len = |len: u32, crops: u32, overlap: u32| -> u32 {
        ((f64::from(overlap) * f64::from(crops - 1) + f64::from(len)) / f64::from(crops)).ceil()
            as u32
    };
    for layer in 0..n_layers {
        let crops_per_side = 2u32.pow(layer as u32 + 1);
        let overlap = (overlap_ratio * short_side * (2.0 / f64::from(crops_per_side))) as u32;
        let crop_w = crop_len(width, crops_per_side, overlap);
        let crop_h = crop_len(height, crops_per_side, overlap);
        for i in 0..crops_per_side {
            for j in 0..crops_per_side {
                let x0 = (crop_w - overlap) * i;
                let y0 = (crop_h - overlap) * j;
                boxes.push(CropBox {
                    x0,
                    y0,
                    x1: (x0 + crop_w).min(width),
                    y1: (y0 + crop_h).min(height),
                    layer: layer + 1,
                });
            }
        }
    }
    boxes
}

/// Whether a mask box (in the crop's frame) lies within `atol` pixels of a crop edge that is not also an edge of
/// the original image: such masks are probably cut by the crop.
pub fn is_box_near_crop_edge(
    bbox: &BoxXyxy,
    crop: &CropBox,
    width: u32,
    height: u32,
    atol: f32,
) -> bool {
    let uncropped = [
        bbox.x0 + crop.x0,
        bbox.y0 + crop.y0,
        bbox.x1 + crop.x0,
        bbox.y1 + crop.y0,
    ];
    let crop_edges = [crop.x0, crop.y0, crop.x1, crop.y1];
    let image_edges = [0, 0, width, height];
    let close = |a: u32, b: u32| (a as f32 - b as f32).abs() <= atol;
    (0..4).any(|i| close(uncropped[i], crop_edges[i]) && !close(uncropped[i], image_edges[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_holds_cell_centres_row_by_row() {
        assert_eq!(build_point_grid(1), vec![[0.5, 0.5]]);
        assert_eq!(
            build_point_grid(2),
            vec![[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
        );
        let grid = build_point_grid(32);
        assert_eq!(grid.len(), 1024);
        assert!((grid[1][0] - 3.0 / 64.0).abs() < 1e-7);
        assert!((grid[32][1] - 3.0 / 64.0).abs() < 1e-7);
    }

    #[test]
    fn layer_grids_shrink_by_the_downscale_factor() {
        let sizes: Vec<usize> = build_all_layer_point_grids(32, 2, 2)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![1024, 256, 64]);
    }

    #[test]
    fn crop_boxes_match_sam_for_one_layer() {
        // SAM on a 480x360 image, 1 layer, overlap 512/1500: overlap int(0.3413*360*1)=122,
        // crop_w = ceil((122+480)/2)=301, crop_h = ceil((122+360)/2)=241.
        let boxes = generate_crop_boxes(480, 360, 1, 512.0 / 1500.0);
        let xyxy: Vec<[u32; 4]> = boxes.iter().map(|b| [b.x0, b.y0, b.x1, b.y1]).collect();
        assert_eq!(
            xyxy,
            vec![
                [0, 0, 480, 360],
                [0, 0, 301, 241],
                [0, 119, 301, 360],
                [179, 0, 480, 241],
                [179, 119, 480, 360]
            ]
        );
        assert_eq!(boxes[3].layer, 1);
    }

    #[test]
    fn boxes_near_inner_crop_edges_are_flagged() {
        let crop = CropBox {
            x0: 100,
            y0: 0,
            x1: 300,
            y1: 200,
            layer: 1,
        };
        // Touches the crop's left edge (x=100 in the image), which is not an image edge.
        let left = BoxXyxy {
            x0: 5,
            y0: 50,
            x1: 50,
            y1: 80,
        };
        assert!(is_box_near_crop_edge(&left, &crop, 300, 400, 20.0));
        // Touches the top edge, which is also the image's top edge, and is far from the others.
        let top = BoxXyxy {
            x0: 50,
            y0: 0,
            x1: 100,
            y1: 80,
        };
        assert!(!is_box_near_crop_edge(&top, &crop, 300, 400, 20.0));
        // The whole image as crop never flags anything.
        let whole = CropBox::whole(300, 400);
        let full = BoxXyxy {
            x0: 0,
            y0: 0,
            x1: 299,
            y1: 399,
        };
        assert!(!is_box_near_crop_edge(&full, &whole, 300, 400, 20.0));
    }
}
