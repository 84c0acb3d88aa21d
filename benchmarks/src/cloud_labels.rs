//! The label map the cloud would return for a frame (MobileSAM + a fusion rule, by default the cloud-infer
//! defaults: guided prompting, confident-vote, the edge's scores times the semantic head's), computed in-process
//! and cached as PNGs with a JSON note of what it cost, so benchmark reruns skip the SAM work but still report the
//! refinement time.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use image::RgbImage;
use models::SemanticHead;
use models::SessionConfig;
use models::dataset::Sample;
use models::edge::EdgeOutput;
use models::image_ops::{decode_label_png, encode_label_png};
use models::paths::models_dir;
use models::refinement::Refinement;
use models::sam::{GeneratorConfig, Prompting, SamModel};
use sam_core::FusionRule;
use serde::{Deserialize, Serialize};

#[derive(Args, Debug)]
pub struct CloudArgs {
    #[arg(long, default_value_os_t = models_dir().join("mobilesam"))]
    sam_model: PathBuf,
    /// The cloud's semantic head (used with `edge-and-head` class evidence, the cloud-infer default).
    #[arg(long, default_value_os_t = models_dir().join("cloud-head"))]
    semantic_head: PathBuf,
    /// Cached cloud label maps live under `<cache>/<edge model>-<settings>/`.
    #[arg(long, default_value = "runs/cache/cloud-labels")]
    cache: PathBuf,
}

/// How the cloud spends its prompts and fuses masks with the edge scores (cloud-infer's `--prompt-mode`,
/// `--max-prompts`, `--points-per-side`, `--fusion` and `--class-evidence`).
#[derive(Debug, Clone, PartialEq)]
pub struct RefinementSettings {
    pub prompting: String,
    pub max_prompts: usize,
    pub points_per_side: usize,
    pub fusion: String,
    /// `edge` or `edge-and-head`.
    pub class_evidence: String,
}

impl Default for RefinementSettings {
    fn default() -> Self {
        Self {
            prompting: "guided".into(),
            max_prompts: 96,
            points_per_side: 32,
            fusion: "confident-vote".into(),
            class_evidence: "edge-and-head".into(),
        }
    }
}

impl RefinementSettings {
    fn generator(&self) -> Result<GeneratorConfig> {
        let prompting = Prompting::from_name(&self.prompting).with_context(|| {
            format!(
                "prompt mode `{}` is unknown (grid, adaptive or guided)",
                self.prompting
            )
        })?;
        Ok(GeneratorConfig::refinement(
            prompting,
            self.points_per_side,
            self.max_prompts,
        ))
    }

    fn fusion_rule(&self) -> Result<FusionRule> {
        FusionRule::from_name(&self.fusion).with_context(|| {
            format!(
                "fusion rule `{}` is unknown (ssa-vote, logit-sum or confident-vote)",
                self.fusion
            )
        })
    }

    /// Whether the semantic head contributes class evidence.
    fn uses_head(&self) -> Result<bool> {
        match self.class_evidence.as_str() {
            "edge" => Ok(false),
            "edge-and-head" => Ok(true),
            other => bail!("class evidence `{other}` is unknown (edge or edge-and-head)"),
        }
    }

    fn cache_key(&self) -> String {
        match self.prompting.as_str() {
            "grid" => format!("grid{}-{}", self.points_per_side, self.fusion),
            mode => format!(
                "{mode}{}x{}-{}",
                self.max_prompts, self.points_per_side, self.fusion
            ),
        }
    }
}

/// What a refinement produced and cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefineCost {
    /// Encoder, prompts and fusion, in milliseconds, as measured when the labels were computed.
    pub refine_ms: f64,
    pub masks: usize,
    /// Width and height of the edge scores the labels were fused from: a cached map is reused only for scores of
    /// the same resolution (older notes without it are recomputed).
    pub score_size: (u32, u32),
}

pub struct CloudLabeller {
    sam: SamModel,
    head: Option<SemanticHead>,
    cache: PathBuf,
    settings: RefinementSettings,
    config: GeneratorConfig,
    rule: FusionRule,
}

impl CloudLabeller {
    /// The cloud-infer defaults, for `edge` model `name`/`version`.
    pub fn new(args: &CloudArgs, name: &str, version: &str) -> Result<Self> {
        Self::with_settings(
            &args.sam_model,
            &args.semantic_head,
            &args.cache,
            &format!("{name}-{version}"),
            RefinementSettings::default(),
        )
    }

    pub fn with_settings(
        sam_model: &std::path::Path,
        semantic_head: &std::path::Path,
        cache_root: &std::path::Path,
        edge_key: &str,
        settings: RefinementSettings,
    ) -> Result<Self> {
        let head = match settings.uses_head()? {
            true => Some(
                SemanticHead::load(semantic_head)
                    .with_context(|| format!("loading {}", semantic_head.display()))?,
            ),
            false => None,
        };
        // Labels from another head version are other labels.
        let head_key = head.as_ref().map_or(String::new(), |head| {
            format!("-head{}", head.manifest().version)
        });
        let cache = cache_root.join(format!("{edge_key}-{}{head_key}", settings.cache_key()));
        std::fs::create_dir_all(&cache)?;
        Ok(Self {
            sam: SamModel::load(sam_model, SessionConfig::default())?,
            head,
            cache,
            config: settings.generator()?,
            rule: settings.fusion_rule()?,
            settings,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "MobileSAM {} + {} on {} class evidence, cached in {}",
            self.settings.cache_key(),
            self.rule.name(),
            self.settings.class_evidence,
            self.cache.display()
        )
    }

    /// The refined label map of `sample` (at the image's size), from the cache or computed now.
    pub fn labels(
        &mut self,
        sample: &Sample,
        image: &RgbImage,
        edge: &EdgeOutput,
    ) -> Result<Vec<u8>> {
        Ok(self.refine(sample, image, edge)?.0)
    }

    /// Like [`Self::labels`], with what computing them cost.
    pub fn refine(
        &mut self,
        sample: &Sample,
        image: &RgbImage,
        edge: &EdgeOutput,
    ) -> Result<(Vec<u8>, RefineCost)> {
        let path = self.cache.join(format!("{}.png", sample.name()));
        let cost_path = path.with_extension("json");
        let (width, height) = image.dimensions();
        let score_size = (edge.score_width, edge.score_height);
        if let (Ok(bytes), Ok(cost)) = (std::fs::read(&path), std::fs::read(&cost_path)) {
            let cached = decode_label_png(&bytes)?;
            if let (true, Ok(cost)) = (
                cached.dimensions() == (width, height),
                serde_json::from_slice::<RefineCost>(&cost),
            ) && cost.score_size == score_size
            {
                return Ok((cached.into_raw(), cost));
            }
        }
        let scores = edge.class_scores().resized_nearest(width, height);
        let refined = Refinement {
            sam: &self.sam,
            head: self.head.as_ref(),
            generator: &self.config,
            rule: &self.rule,
        }
        .run(image, &scores, &scores)?;
        let labels = refined.labels;
        let cost = RefineCost {
            refine_ms: refined.encoder_ms + refined.decoder_ms + refined.fusion_ms,
            masks: refined.mask_count,
            score_size,
        };
        for (target, bytes) in [
            (&path, encode_label_png(&labels, width, height)?),
            (&cost_path, serde_json::to_vec(&cost)?),
        ] {
            let tmp = target.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, target)?;
        }
        Ok((labels, cost))
    }
}
