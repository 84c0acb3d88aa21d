//! The backend seam between the HTTP layer and the models: the server only knows [`Refiner`], so tests can run it
//! with a stand-in and the real MobileSAM backend stays a few lines of glue.

use std::path::Path;
use std::time::Instant;

use image::RgbImage;
use models::SessionConfig;
use models::sam::{GeneratorConfig, Prompting, SamModel};
use sam_core::{ClassScores, ConfidentVoteParams, FusionRule, fuse};
use serde::Serialize;
use wire::ModelRef;

/// One frame to refine.
pub struct RefineFrame<'a> {
    pub image: &'a RgbImage,
    /// The edge's scores as sent (low resolution): enough to steer prompts.
    pub edge_scores: &'a ClassScores,
    /// The same scores upsampled to the image's size: what fusion labels pixels with.
    pub edge_scores_full: &'a ClassScores,
}

#[derive(Debug, Clone)]
pub struct Refinement {
    /// Class indices at the image's size.
    pub labels: Vec<u8>,
    pub mask_count: u32,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    pub fusion_ms: f64,
}

/// What `/info` says about the backend.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RefinerInfo {
    pub model: ModelRef,
    pub fusion: String,
    pub prompt_mode: String,
    pub points_per_side: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RefinerError(pub String);

/// Turns a frame plus the edge's opinion into a refined label map. Runs on the refinement thread, one frame at a
/// time, hence `&mut self` and no `Sync`.
pub trait Refiner: Send {
    fn info(&self) -> RefinerInfo;
    fn refine(&mut self, frame: RefineFrame<'_>) -> Result<Refinement, RefinerError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PromptModeArg {
    /// Every grid point (SAM's automatic mask generator).
    Grid,
    /// Coarse-to-fine grid walk skipping covered points, up to `--max-prompts`.
    Adaptive,
    /// Most uncertain edge regions first, up to `--max-prompts`.
    Guided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FusionArg {
    SsaVote,
    LogitSum,
    ConfidentVote,
}

impl FusionArg {
    pub fn rule(self) -> FusionRule {
        match self {
            FusionArg::SsaVote => FusionRule::SsaVote,
            FusionArg::LogitSum => FusionRule::LogitSum,
            FusionArg::ConfidentVote => FusionRule::ConfidentVote(ConfidentVoteParams::default()),
        }
    }
}

/// How the MobileSAM backend spends its prompts and fuses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamSettings {
    pub points_per_side: usize,
    pub prompt_mode: PromptModeArg,
    pub max_prompts: usize,
    pub fusion: FusionArg,
    pub threads: usize,
}

impl SamSettings {
    fn generator(&self) -> GeneratorConfig {
        let prompting = match self.prompt_mode {
            PromptModeArg::Grid => Prompting::Grid,
            PromptModeArg::Adaptive => Prompting::Adaptive,
            PromptModeArg::Guided => Prompting::Guided,
        };
        GeneratorConfig::refinement(prompting, self.points_per_side, self.max_prompts)
    }
}

/// MobileSAM's automatic mask generator followed by a `sam_core` fusion rule.
pub struct SamRefiner {
    model: SamModel,
    generator: GeneratorConfig,
    fusion: FusionRule,
    info: RefinerInfo,
}

impl SamRefiner {
    pub fn load(dir: &Path, settings: SamSettings) -> Result<Self, RefinerError> {
        let session = SessionConfig {
            intra_threads: settings.threads.max(1),
            ..SessionConfig::default()
        };
        let model = SamModel::load(dir, session)
            .map_err(|e| RefinerError(format!("loading {}: {e}", dir.display())))?;
        let fusion = settings.fusion.rule();
        let info = RefinerInfo {
            model: ModelRef {
                name: model.manifest().name.clone(),
                version: model.manifest().version.clone(),
            },
            fusion: fusion.name().to_string(),
            prompt_mode: format!("{:?}", settings.prompt_mode).to_lowercase(),
            points_per_side: settings.points_per_side,
        };
        Ok(Self {
            model,
            generator: settings.generator(),
            fusion,
            info,
        })
    }
}

impl Refiner for SamRefiner {
    fn info(&self) -> RefinerInfo {
        self.info.clone()
    }

    fn refine(&mut self, frame: RefineFrame<'_>) -> Result<Refinement, RefinerError> {
        let generated = self
            .model
            .generate(frame.image, &self.generator, Some(frame.edge_scores))
            .map_err(|e| RefinerError(e.to_string()))?;
        let fusion_start = Instant::now();
        let labels = fuse(&self.fusion, &generated.masks, frame.edge_scores_full);
        Ok(Refinement {
            labels,
            mask_count: generated.masks.len() as u32,
            encoder_ms: generated.encoder_ms,
            decoder_ms: generated.decoder_ms + generated.postprocess_ms,
            fusion_ms: fusion_start.elapsed().as_secs_f64() * 1e3,
        })
    }
}
