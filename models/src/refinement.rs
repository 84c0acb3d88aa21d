//! The cloud's refinement of one frame, shared by cloud-infer and the benchmarks: MobileSAM's masks, labelled by a
//! fusion rule from the class evidence (the edge's scores, times the semantic head's when there is one).

use std::time::Instant;

use image::RgbImage;
use sam_core::{ClassScores, FusionRule, fuse};

use crate::sam::{GeneratorConfig, SamError, SamModel};
use crate::semantic_head::{SemanticHead, SemanticHeadError};

#[derive(Debug, thiserror::Error)]
pub enum RefineError {
    #[error(transparent)]
    Sam(#[from] SamError),
    #[error(transparent)]
    Head(#[from] SemanticHeadError),
    #[error("the semantic head knows {head} classes, the edge sent scores for {edge}")]
    ClassCount { head: usize, edge: usize },
}

/// A refined label map and where the time went.
#[derive(Debug, Clone)]
pub struct Refined {
    /// Class indices at the image's size.
    pub labels: Vec<u8>,
    pub mask_count: usize,
    pub encoder_ms: f64,
    /// Prompt decoding and mask post-processing.
    pub decoder_ms: f64,
    /// The semantic head (when used) and labelling the masks.
    pub fusion_ms: f64,
}

/// The models and settings one refinement needs.
pub struct Refinement<'a> {
    pub sam: &'a SamModel,
    pub head: Option<&'a SemanticHead>,
    pub generator: &'a GeneratorConfig,
    pub rule: &'a FusionRule,
}

impl Refinement<'_> {
    /// Refines `image`. `guidance` steers the prompts (the edge's scores at any resolution); `edge_scores` are the
    /// edge's scores at the image's size.
    pub fn run(
        &self,
        image: &RgbImage,
        guidance: &ClassScores,
        edge_scores: &ClassScores,
    ) -> Result<Refined, RefineError> {
        let embedding = self.sam.embed(image)?;
        let generated = self
            .sam
            .generate(&embedding, self.generator, Some(guidance))?;
        let fusion_start = Instant::now();
        let combined;
        let evidence = match self.head {
            None => edge_scores,
            Some(head) => {
                let head_scores = head.class_scores(&embedding)?;
                combined = edge_scores
                    .product(&head_scores, head.evidence_exponents())
                    .ok_or(RefineError::ClassCount {
                        head: head_scores.classes,
                        edge: edge_scores.classes,
                    })?;
                &combined
            }
        };
        let labels = fuse(self.rule, &generated.masks, evidence);
        Ok(Refined {
            labels,
            mask_count: generated.masks.len(),
            encoder_ms: embedding.encoder_ms,
            decoder_ms: generated.decoder_ms + generated.postprocess_ms,
            fusion_ms: fusion_start.elapsed().as_secs_f64() * 1e3,
        })
    }
}
