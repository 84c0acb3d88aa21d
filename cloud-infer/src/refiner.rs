//! The backend seam between the HTTP layer and the models: the server only knows [`Refiner`], so tests can run it
//! with a stand-in and the real MobileSAM backend stays a few lines of glue.

use std::path::Path;

use image::RgbImage;
use models::SemanticHead;
use models::SessionConfig;
use models::sam::{GeneratorConfig, Prompting, SamModel};
use sam_core::{ClassScores, ConfidentVoteParams, FusionRule};
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
    /// Whose class scores label the masks: `edge`, or `edge-and-head`.
    pub class_evidence: String,
    /// The cloud's semantic head, when it contributes class evidence.
    pub semantic_head: Option<ModelRef>,
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

/// Where the class scores that label SAM's masks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClassEvidenceArg {
    /// The edge's scores only: the cloud sharpens the edge's opinion along SAM's masks.
    Edge,
    /// The edge's scores times the cloud's semantic head on the SAM embedding (a product of experts, weighted by
    /// the exponents in the head's manifest): the head was trained on the daylight training set only and keeps its
    /// footing where the edge model drifts.
    EdgeAndHead,
}

/// How the MobileSAM backend spends its prompts and fuses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamSettings {
    pub points_per_side: usize,
    pub prompt_mode: PromptModeArg,
    pub max_prompts: usize,
    pub fusion: FusionArg,
    pub class_evidence: ClassEvidenceArg,
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
    head: Option<SemanticHead>,
    generator: GeneratorConfig,
    fusion: FusionRule,
    info: RefinerInfo,
}

impl SamRefiner {
    /// Loads MobileSAM from `dir`, and the semantic head from `head_dir` when the settings ask for its evidence.
    pub fn load(dir: &Path, head_dir: &Path, settings: SamSettings) -> Result<Self, RefinerError> {
        let session = SessionConfig {
            intra_threads: settings.threads.max(1),
            ..SessionConfig::default()
        };
        let model = SamModel::load(dir, session)
            .map_err(|e| RefinerError(format!("loading {}: {e}", dir.display())))?;
        let head = match settings.class_evidence {
            ClassEvidenceArg::Edge => None,
            ClassEvidenceArg::EdgeAndHead => Some(
                SemanticHead::load(head_dir)
                    .map_err(|e| RefinerError(format!("loading {}: {e}", head_dir.display())))?,
            ),
        };
        let fusion = settings.fusion.rule();
        let info = RefinerInfo {
            model: ModelRef {
                name: model.manifest().name.clone(),
                version: model.manifest().version.clone(),
            },
            fusion: fusion.name().to_string(),
            prompt_mode: format!("{:?}", settings.prompt_mode).to_lowercase(),
            points_per_side: settings.points_per_side,
            class_evidence: match settings.class_evidence {
                ClassEvidenceArg::Edge => "edge",
                ClassEvidenceArg::EdgeAndHead => "edge-and-head",
            }
            .into(),
            semantic_head: head.as_ref().map(|head| ModelRef {
                name: head.manifest().name.clone(),
                version: head.manifest().version.clone(),
            }),
        };
        Ok(Self {
            model,
            head,
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
        let refined = models::refinement::Refinement {
            sam: &self.model,
            head: self.head.as_ref(),
            generator: &self.generator,
            rule: &self.fusion,
        }
        .run(frame.image, frame.edge_scores, frame.edge_scores_full)
        .map_err(|e| RefinerError(e.to_string()))?;
        Ok(Refinement {
            labels: refined.labels,
            mask_count: refined.mask_count as u32,
            encoder_ms: refined.encoder_ms,
            decoder_ms: refined.decoder_ms,
            fusion_ms: refined.fusion_ms,
        })
    }
}
