//! Building miners from configuration: a serde config struct, name + parameters
//! factories, and KubeEdge Sedna's `HEM_NAME` / `HEM_PARAMETERS` environment form.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::miner::Miner;
use crate::policy::{AllOf, Policy, RateCap, Threshold, UploadBudget};
use crate::scorer::{
    CrossEntropy, IanvsConfidence, LeastConfidence, Margin, RareClassWeighted, Scorer,
};

/// Scorer choice and parameters, tagged by `name`. Names are kebab-case; the CamelCase
/// and snake_case spellings are accepted too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScorerConfig {
    #[serde(alias = "IanvsConfidence", alias = "ianvs_confidence", alias = "ianvs")]
    IanvsConfidence {
        #[serde(default = "default_pixel_threshold")]
        pixel_threshold: f32,
    },
    #[serde(alias = "CrossEntropy", alias = "cross_entropy", alias = "entropy")]
    CrossEntropy {},
    #[serde(alias = "Margin")]
    Margin {},
    #[serde(alias = "LeastConfidence", alias = "least_confidence")]
    LeastConfidence {},
    #[serde(alias = "RareClassWeighted", alias = "rare_class_weighted")]
    RareClassWeighted {
        /// One weight per class; CamVid's median-frequency weights when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class_weights: Option<Vec<f32>>,
    },
}

fn default_pixel_threshold() -> f32 {
    IanvsConfidence::DEFAULT_PIXEL_THRESHOLD
}

impl ScorerConfig {
    /// Factory from a scorer name and a JSON object of its parameters (or `null`).
    pub fn from_name(name: &str, parameters: Value) -> Result<Self, ConfigError> {
        Ok(serde_json::from_value(tagged(name, parameters)?)?)
    }

    pub fn build(&self) -> Result<Box<dyn Scorer>, ConfigError> {
        Ok(match self {
            Self::IanvsConfidence { pixel_threshold } => {
                Box::new(IanvsConfidence::new(*pixel_threshold)?)
            }
            Self::CrossEntropy {} => Box::new(CrossEntropy),
            Self::Margin {} => Box::new(Margin),
            Self::LeastConfidence {} => Box::new(LeastConfidence),
            Self::RareClassWeighted { class_weights } => Box::new(match class_weights {
                Some(weights) => RareClassWeighted::new(weights.clone())?,
                None => RareClassWeighted::camvid(),
            }),
        })
    }
}

/// Policy choice and parameters, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// Hard when the score is below `threshold`; the scorer's default when omitted.
    #[serde(alias = "Threshold")]
    Threshold {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f32>,
    },
    /// See [`UploadBudget`].
    #[serde(
        alias = "UploadBudget",
        alias = "upload-budget",
        alias = "upload_budget"
    )]
    Budget {
        target_ratio: f32,
        #[serde(default = "default_window")]
        window: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        correction_horizon: Option<usize>,
    },
    /// See [`RateCap`].
    #[serde(alias = "RateCap", alias = "rate_cap")]
    RateCap {
        max_per_second: f64,
        #[serde(default = "default_burst")]
        burst: f64,
    },
    /// Upload only when every listed policy agrees; see [`AllOf`].
    #[serde(alias = "All", alias = "and")]
    All { policies: Vec<PolicyConfig> },
}

fn default_window() -> usize {
    UploadBudget::DEFAULT_WINDOW
}

fn default_burst() -> f64 {
    1.0
}

impl PolicyConfig {
    /// Factory from a policy name and a JSON object of its parameters (or `null`).
    pub fn from_name(name: &str, parameters: Value) -> Result<Self, ConfigError> {
        Ok(serde_json::from_value(tagged(name, parameters)?)?)
    }

    /// `default_threshold` fills in a threshold policy without one: the scorer's default.
    pub fn build(&self, default_threshold: f32) -> Result<Box<dyn Policy>, ConfigError> {
        Ok(match self {
            Self::Threshold { threshold } => {
                Box::new(Threshold::new(threshold.unwrap_or(default_threshold))?)
            }
            Self::Budget {
                target_ratio,
                window,
                correction_horizon,
            } => {
                let budget = UploadBudget::new(*target_ratio, *window)?;
                Box::new(match correction_horizon {
                    Some(frames) => budget.with_correction_horizon(*frames)?,
                    None => budget,
                })
            }
            Self::RateCap {
                max_per_second,
                burst,
            } => Box::new(RateCap::new(*max_per_second, *burst)?),
            Self::All { policies } => Box::new(AllOf::new(
                policies
                    .iter()
                    .map(|policy| policy.build(default_threshold))
                    .collect::<Result<_, _>>()?,
            )?),
        })
    }
}

/// Everything needed to build a [`Miner`]:
///
/// ```json
/// {"scorer": {"name": "cross-entropy"},
///  "policy": {"name": "budget", "target_ratio": 0.15, "window": 200}}
/// ```
///
/// Without `policy`, frames are hard below the scorer's default threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinerConfig {
    pub scorer: ScorerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
}

/// Sedna's defaults for its `IBT` filter (both 0.5), which differ from Ianvs' own.
const SEDNA_IBT_DEFAULT_THRESHOLD: f64 = 0.5;

impl MinerConfig {
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Reads KubeEdge Sedna's hard-example-mining settings, as passed to edge workers in
    /// the `HEM_NAME` and `HEM_PARAMETERS` environment variables. Sedna passes parameter
    /// values as strings, so numeric strings are accepted wherever numbers are.
    ///
    /// - `CrossEntropy`, `{"threshold_cross_entropy": t}` (default 0.5): the
    ///   [`CrossEntropy`] scorer, hard below `t`.
    /// - `IBT`, `{"threshold_img": i, "threshold_box": b}` (defaults 0.5): Sedna's
    ///   image-box-threshold rule on pixels instead of boxes, i.e. [`IanvsConfidence`]
    ///   with `pixel_threshold = b`, hard when the confident fraction is below `i`. (Sedna
    ///   also counts a fraction exactly equal to `i` as hard; that edge case is dropped.)
    /// - any scorer name this crate knows, with that scorer's parameters plus an optional
    ///   `threshold` (the scorer's default when omitted).
    ///
    /// Unknown parameters are rejected rather than ignored, so typos surface at start-up.
    pub fn from_sedna(hem_name: &str, hem_parameters: &str) -> Result<Self, ConfigError> {
        let mut parameters = parse_hem_parameters(hem_parameters)?;
        let scorer_name = match hem_name.trim() {
            "CrossEntropy" => {
                rename_key(&mut parameters, "threshold_cross_entropy", "threshold");
                "cross-entropy"
            }
            "IBT" => {
                rename_key(&mut parameters, "threshold_img", "threshold");
                rename_key(&mut parameters, "threshold_box", "pixel_threshold");
                for key in ["threshold", "pixel_threshold"] {
                    parameters
                        .entry(key)
                        .or_insert_with(|| Value::from(SEDNA_IBT_DEFAULT_THRESHOLD));
                }
                "ianvs-confidence"
            }
            other => other,
        };
        let threshold = parameters
            .remove("threshold")
            .map(serde_json::from_value::<f32>)
            .transpose()?;
        Ok(Self {
            scorer: ScorerConfig::from_name(scorer_name, Value::Object(parameters))?,
            policy: Some(PolicyConfig::Threshold { threshold }),
        })
    }

    pub fn build(&self) -> Result<Miner, ConfigError> {
        let scorer = self.scorer.build()?;
        let default_threshold = scorer.default_threshold();
        let policy = match &self.policy {
            Some(policy) => policy.build(default_threshold)?,
            None => Box::new(Threshold::new(default_threshold)?),
        };
        Ok(Miner::new(scorer, policy))
    }
}

/// Turns `parameters` (an object or `null`) into an object tagged with `name`.
fn tagged(name: &str, parameters: Value) -> Result<Value, ConfigError> {
    let mut object = match parameters {
        Value::Null => Map::new(),
        Value::Object(object) => object,
        other => return Err(ConfigError::ParametersNotObject(other)),
    };
    object.insert("name".to_owned(), Value::from(name));
    Ok(Value::Object(object))
}

/// Accepts an object, or the list Sedna's controller actually puts in `HEM_PARAMETERS` (its `parameters` field
/// marshalled as is: `[{"key": "threshold_img", "value": "0.9"}]`, `null` when empty), as Sedna's own library does.
fn parse_hem_parameters(text: &str) -> Result<Map<String, Value>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let object = match serde_json::from_str(text)? {
        Value::Null => Map::new(),
        Value::Object(object) => object,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(mut pair) => match (pair.remove("key"), pair.remove("value")) {
                    (Some(Value::String(key)), Some(value)) => Ok((key, value)),
                    (key, value) => Err(ConfigError::ParametersNotObject(
                        serde_json::json!({ "key": key, "value": value }),
                    )),
                },
                other => Err(ConfigError::ParametersNotObject(other)),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(ConfigError::ParametersNotObject(other)),
    };
    object
        .into_iter()
        .map(|(key, value)| {
            let number = numeric(&key, value)?;
            Ok((key, number))
        })
        .collect()
}

/// Numbers stay, numeric strings become numbers, arrays are converted element-wise.
fn numeric(key: &str, value: Value) -> Result<Value, ConfigError> {
    let not_number = |value: Value| ConfigError::HemParameterNotNumber {
        key: key.to_owned(),
        value,
    };
    match value {
        Value::Number(_) => Ok(value),
        Value::String(ref text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| not_number(value.clone())),
        Value::Array(items) => items
            .into_iter()
            .map(|item| numeric(key, item))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Err(not_number(other)),
    }
}

fn rename_key(parameters: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(value) = parameters.remove(from) {
        parameters.insert(to.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_documented_config() {
        let config = MinerConfig::from_json(
            r#"{"scorer": {"name": "cross-entropy"},
                "policy": {"name": "budget", "target_ratio": 0.15, "window": 200}}"#,
        )
        .unwrap();
        assert_eq!(config.scorer, ScorerConfig::CrossEntropy {});
        assert_eq!(
            config.policy,
            Some(PolicyConfig::Budget {
                target_ratio: 0.15,
                window: 200,
                correction_horizon: None
            })
        );
        config.build().unwrap();
    }

    #[test]
    fn parses_combinations_and_defaults() {
        let config = MinerConfig::from_json(
            r#"{"scorer": {"name": "RareClassWeighted"},
                "policy": {"name": "all", "policies": [
                    {"name": "budget", "target_ratio": 0.1},
                    {"name": "rate-cap", "max_per_second": 2},
                    {"name": "threshold"}]}}"#,
        )
        .unwrap();
        let Some(PolicyConfig::All { policies }) = &config.policy else {
            panic!("expected a combination, got {:?}", config.policy);
        };
        assert_eq!(
            policies[0],
            PolicyConfig::Budget {
                target_ratio: 0.1,
                window: 200,
                correction_horizon: None
            }
        );
        assert_eq!(
            policies[1],
            PolicyConfig::RateCap {
                max_per_second: 2.0,
                burst: 1.0
            }
        );
        config.build().unwrap();
    }

    #[test]
    fn round_trips_through_json() {
        let config = MinerConfig {
            scorer: ScorerConfig::IanvsConfidence {
                pixel_threshold: 0.8,
            },
            policy: Some(PolicyConfig::Threshold {
                threshold: Some(0.9),
            }),
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            json,
            r#"{"scorer":{"name":"ianvs-confidence","pixel_threshold":0.8},"policy":{"name":"threshold","threshold":0.9}}"#
        );
        assert_eq!(MinerConfig::from_json(&json).unwrap(), config);
    }

    #[test]
    fn rejects_unknown_names_and_fields() {
        assert!(MinerConfig::from_json(r#"{"scorer": {"name": "magic"}}"#).is_err());
        assert!(
            MinerConfig::from_json(r#"{"scorer": {"name": "margin", "threshold": 0.5}}"#).is_err()
        );
        let typo = r#"{"scorer": {"name": "margin"},
                       "policy": {"name": "budget", "target_ration": 0.1}}"#;
        assert!(MinerConfig::from_json(typo).is_err());
    }

    #[test]
    fn rejects_invalid_values_at_build_time() {
        let config = MinerConfig::from_json(
            r#"{"scorer": {"name": "margin"},
                "policy": {"name": "budget", "target_ratio": 1.5}}"#,
        )
        .unwrap();
        assert!(matches!(
            config.build(),
            Err(ConfigError::InvalidParameter {
                parameter: "target_ratio",
                ..
            })
        ));
        let empty = PolicyConfig::All { policies: vec![] };
        assert!(empty.build(0.5).is_err());
    }

    #[test]
    fn factories_from_name_and_parameters() {
        assert_eq!(
            ScorerConfig::from_name("ianvs", json!({"pixel_threshold": 0.7})).unwrap(),
            ScorerConfig::IanvsConfidence {
                pixel_threshold: 0.7
            }
        );
        assert_eq!(
            ScorerConfig::from_name("LeastConfidence", Value::Null).unwrap(),
            ScorerConfig::LeastConfidence {}
        );
        assert_eq!(
            PolicyConfig::from_name("RateCap", json!({"max_per_second": 0.5, "burst": 2})).unwrap(),
            PolicyConfig::RateCap {
                max_per_second: 0.5,
                burst: 2.0
            }
        );
        assert!(matches!(
            PolicyConfig::from_name("threshold", json!([0.5])),
            Err(ConfigError::ParametersNotObject(_))
        ));
    }

    #[test]
    fn missing_policy_uses_scorer_default_threshold() {
        let miner = MinerConfig::from_json(r#"{"scorer": {"name": "ianvs-confidence"}}"#)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(miner.scorer().default_threshold(), 0.95);
    }

    #[test]
    fn sedna_cross_entropy() {
        let config =
            MinerConfig::from_sedna("CrossEntropy", r#"{"threshold_cross_entropy": 0.4}"#).unwrap();
        assert_eq!(config.scorer, ScorerConfig::CrossEntropy {});
        assert_eq!(
            config.policy,
            Some(PolicyConfig::Threshold {
                threshold: Some(0.4)
            })
        );
        let defaults = MinerConfig::from_sedna("CrossEntropy", "").unwrap();
        assert_eq!(
            defaults.policy,
            Some(PolicyConfig::Threshold { threshold: None })
        );
        assert_eq!(defaults.build().unwrap().scorer().default_threshold(), 0.5);
    }

    #[test]
    fn sedna_ibt_maps_to_ianvs_confidence_with_string_values() {
        let config = MinerConfig::from_sedna(
            "IBT",
            r#"{"threshold_img": "0.9", "threshold_box": "0.85"}"#,
        )
        .unwrap();
        assert_eq!(
            config.scorer,
            ScorerConfig::IanvsConfidence {
                pixel_threshold: 0.85
            }
        );
        assert_eq!(
            config.policy,
            Some(PolicyConfig::Threshold {
                threshold: Some(0.9)
            })
        );
        let defaults = MinerConfig::from_sedna("IBT", "{}").unwrap();
        assert_eq!(
            defaults.scorer,
            ScorerConfig::IanvsConfidence {
                pixel_threshold: 0.5
            }
        );
        assert_eq!(
            defaults.policy,
            Some(PolicyConfig::Threshold {
                threshold: Some(0.5)
            })
        );
    }

    #[test]
    fn sedna_form_accepts_this_crates_scorers() {
        let config = MinerConfig::from_sedna(
            "RareClassWeighted",
            r#"{"class_weights": ["1", 2, 3], "threshold": 0.6}"#,
        )
        .unwrap();
        assert_eq!(
            config.scorer,
            ScorerConfig::RareClassWeighted {
                class_weights: Some(vec![1.0, 2.0, 3.0])
            }
        );
        assert_eq!(
            config.policy,
            Some(PolicyConfig::Threshold {
                threshold: Some(0.6)
            })
        );
    }

    /// What Sedna's controller really injects: the `parameters` list marshalled as is, `null` when absent.
    #[test]
    fn sedna_controller_list_form() {
        let config = MinerConfig::from_sedna(
            "IBT",
            r#"[{"key": "threshold_img", "value": "0.9"}, {"key": "threshold_box", "value": "0.85"}]"#,
        )
        .unwrap();
        assert_eq!(
            config.scorer,
            ScorerConfig::IanvsConfidence {
                pixel_threshold: 0.85
            }
        );
        assert_eq!(
            config.policy,
            Some(PolicyConfig::Threshold {
                threshold: Some(0.9)
            })
        );
        for empty in ["null", "[]"] {
            assert_eq!(
                MinerConfig::from_sedna("CrossEntropy", empty)
                    .unwrap()
                    .policy,
                Some(PolicyConfig::Threshold { threshold: None })
            );
        }
        assert!(matches!(
            MinerConfig::from_sedna("CrossEntropy", r#"[{"name": "threshold_cross_entropy"}]"#),
            Err(ConfigError::ParametersNotObject(_))
        ));
    }

    #[test]
    fn sedna_rejects_malformed_parameters() {
        assert!(matches!(
            MinerConfig::from_sedna("CrossEntropy", r#"{"threshold_cross_entropy": "high"}"#),
            Err(ConfigError::HemParameterNotNumber { .. })
        ));
        assert!(matches!(
            MinerConfig::from_sedna("CrossEntropy", "[0.5]"),
            Err(ConfigError::ParametersNotObject(_))
        ));
        assert!(MinerConfig::from_sedna("CrossEntropy", "{not json").is_err());
        assert!(MinerConfig::from_sedna("Random", "{}").is_err());
        assert!(MinerConfig::from_sedna("IBT", r#"{"threshold_imgs": 0.5}"#).is_err());
    }
}
