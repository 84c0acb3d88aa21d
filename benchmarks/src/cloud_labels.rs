//! The label map the cloud would return for a frame (MobileSAM guided prompting + confident-vote fusion, the
//! cloud-infer defaults), computed in-process and cached as PNGs so benchmark reruns skip the SAM work.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use image::RgbImage;
use models::SessionConfig;
use models::dataset::Sample;
use models::edge::EdgeOutput;
use models::image_ops::{decode_label_png, encode_label_png};
use models::manifest::Manifest;
use models::paths::models_dir;
use models::sam::{GeneratorConfig, Guidance, SamModel};
use sam_core::{ConfidentVoteParams, FusionRule, fuse};

#[derive(Args, Debug)]
pub struct CloudArgs {
    #[arg(long, default_value_os_t = models_dir().join("mobilesam"))]
    sam_model: PathBuf,
    /// Cached cloud label maps live under `<cache>/<edge model version>/`.
    #[arg(long, default_value = "runs/cache/cloud-labels")]
    cache: PathBuf,
}

pub struct CloudLabeller {
    sam: SamModel,
    cache: PathBuf,
    config: GeneratorConfig,
    rule: FusionRule,
}

impl CloudLabeller {
    pub fn new(args: &CloudArgs, edge: &Manifest) -> Result<Self> {
        let cache = args
            .cache
            .join(format!("{}-{}-guided-confident", edge.name, edge.version));
        std::fs::create_dir_all(&cache)?;
        Ok(Self {
            sam: SamModel::load(&args.sam_model, SessionConfig::default())?,
            cache,
            config: GeneratorConfig::guided_refinement(),
            rule: FusionRule::ConfidentVote(ConfidentVoteParams::default()),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "MobileSAM guided (48 prompts) + confident-vote, cached in {}",
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
        let path = self.cache.join(format!("{}.png", sample.name()));
        let (width, height) = image.dimensions();
        if let Ok(bytes) = std::fs::read(&path) {
            let cached = decode_label_png(&bytes)?;
            if cached.dimensions() == (width, height) {
                return Ok(cached.into_raw());
            }
        }
        let scores = Guidance {
            probabilities: edge.probabilities.clone(),
            classes: edge.classes,
            width: edge.score_width,
            height: edge.score_height,
        }
        .resized_nearest(width, height);
        let generated = self.sam.generate(image, &self.config, Some(&scores))?;
        let labels = fuse(&self.rule, &generated.masks, &scores);
        let tmp = path.with_extension("png.tmp");
        std::fs::write(&tmp, encode_label_png(&labels, width, height)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(labels)
    }
}
