//! Benchmarking job files in the spirit of KubeEdge-Ianvs: a `benchmarkingjob` with a test environment, the
//! algorithms under test (each a paradigm plus modules with hyperparameter lists) and rank settings. The test
//! environment and each algorithm may be written inline or in their own file (`url:`), as Ianvs does. Paths are
//! relative to the file that names them; `${VAR}` and `${VAR:-default}` expand from the environment, so job files
//! can name the dataset as `${SHARED_DIR:-../../../shared}/datasets/camvid/...`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    benchmarkingjob: RawJob,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    /// Output root; each run of the job gets its own folder under `<workspace>/<name>/`.
    #[serde(default = "default_workspace")]
    workspace: String,
    testenv: InlineOrUrl<TestEnvSpec>,
    test_object: TestObject,
    #[serde(default)]
    rank: RankSpec,
}

fn default_workspace() -> String {
    "runs/benchmarks".into()
}

/// A section written inline or kept in another YAML file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InlineOrUrl<T> {
    Url(String),
    Inline(T),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestEnvFile {
    testenv: TestEnvSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEnvSpec {
    pub dataset: DatasetSpec,
    /// `in-process` runs the models here; `http` sends every frame to a running edge-infer (and through it to
    /// cloud-infer), measuring real wire bytes and latency.
    #[serde(default)]
    pub mode: Mode,
    /// The edge service, for `mode: http`.
    #[serde(default)]
    pub edge_url: Option<String>,
    /// Bearer token of the edge service, when it asks for one.
    #[serde(default)]
    pub edge_token: Option<String>,
    /// Frames shown side by side (image, truth, edge, final) per algorithm.
    #[serde(default = "default_overlays")]
    pub overlays: usize,
    /// The task sequence of lifelong runs: the first task is the one the model was trained on.
    #[serde(default)]
    pub lifelong: Option<LifelongSpec>,
}

fn default_overlays() -> usize {
    3
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    InProcess,
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The original training set (lifelong rehearsal).
    #[serde(default)]
    pub train_index: Option<PathBuf>,
    /// The frames every non-lifelong algorithm is scored on (Ianvs `test_url`).
    pub test_index: PathBuf,
    /// At most this many frames, evenly spaced over the index; 0 = all.
    #[serde(default)]
    pub max_frames: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifelongSpec {
    pub tasks: Vec<TaskSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    /// Labelled validation frames of the task: a column of the accuracy matrix.
    pub eval_index: PathBuf,
    /// Frames the robot meets in this task, in time order; absent for the task the model was trained on.
    #[serde(default)]
    pub stream_index: Option<PathBuf>,
    /// At most this many validation / stream frames (evenly spaced); 0 = all.
    #[serde(default)]
    pub max_eval_frames: usize,
    #[serde(default)]
    pub max_stream_frames: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestObject {
    #[serde(rename = "type")]
    kind: String,
    algorithms: Vec<AlgorithmEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlgorithmEntry {
    name: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    paradigm_type: Option<Paradigm>,
    #[serde(default)]
    modules: Vec<ModuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlgorithmFile {
    algorithm: AlgorithmBody,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlgorithmBody {
    paradigm_type: Paradigm,
    #[serde(default)]
    modules: Vec<ModuleSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Paradigm {
    /// The edge model alone on every frame.
    EdgeOnly,
    /// Every frame refined by the cloud.
    CloudOnly,
    /// The miner sends hard frames to the cloud under an upload budget (Ianvs/Sedna joint inference).
    #[serde(alias = "jointinference")]
    Collaborative,
    /// Rounds of collaborative streaming plus retraining on the cloud's labels (Ianvs lifelong learning).
    #[serde(alias = "lifelonglearning")]
    Lifelong,
}

impl Paradigm {
    pub fn name(self) -> &'static str {
        match self {
            Paradigm::EdgeOnly => "edge-only",
            Paradigm::CloudOnly => "cloud-only",
            Paradigm::Collaborative => "collaborative",
            Paradigm::Lifelong => "lifelong",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleType {
    /// The edge model (`edge-segmenter`, or `cityscapes-baseline` mapped to CamVid classes).
    Basemodel,
    /// The hard-example miner: `name` is the scorer; `upload_ratio` or `threshold` picks the policy.
    HardExampleMining,
    /// The cloud model and its fusion rule.
    CloudRefinement,
    /// Retraining settings of lifelong rounds.
    LifelongTraining,
}

impl ModuleType {
    pub fn name(self) -> &'static str {
        match self {
            ModuleType::Basemodel => "basemodel",
            ModuleType::HardExampleMining => "hard_example_mining",
            ModuleType::CloudRefinement => "cloud_refinement",
            ModuleType::LifelongTraining => "lifelong_training",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleSpec {
    #[serde(rename = "type")]
    kind: ModuleType,
    name: String,
    #[serde(default)]
    url: Option<String>,
    /// Ianvs form: a list of `{param: {values: [...]}}`; every combination becomes one run.
    #[serde(default)]
    hyperparameters: Vec<BTreeMap<String, Values>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Values {
    values: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankSpec {
    /// `[{metric: descend|ascend}, ...]`, applied in order.
    #[serde(default = "default_sort")]
    pub sort_by: Vec<BTreeMap<String, SortOrder>>,
    #[serde(default)]
    pub selected_dataitem: SelectedItems,
    #[serde(default)]
    pub save_mode: SaveMode,
    /// Accepted for Ianvs compatibility; the leaderboard is always printed as a table.
    #[serde(default)]
    #[expect(dead_code, reason = "read from Ianvs job files, not used")]
    pub visualization: Option<Value>,
}

impl Default for RankSpec {
    fn default() -> Self {
        Self {
            sort_by: default_sort(),
            selected_dataitem: SelectedItems::default(),
            save_mode: SaveMode::default(),
            visualization: None,
        }
    }
}

fn default_sort() -> Vec<BTreeMap<String, SortOrder>> {
    vec![BTreeMap::from([("miou".to_string(), SortOrder::Descend)])]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Descend,
    Ascend,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectedItems {
    #[serde(default = "all")]
    pub paradigms: Vec<String>,
    #[serde(default = "all")]
    pub modules: Vec<String>,
    #[serde(default = "all")]
    pub hyperparameters: Vec<String>,
    #[serde(default = "all")]
    pub metrics: Vec<String>,
}

impl Default for SelectedItems {
    fn default() -> Self {
        Self {
            paradigms: all(),
            modules: all(),
            hyperparameters: all(),
            metrics: all(),
        }
    }
}

fn all() -> Vec<String> {
    vec!["all".into()]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveMode {
    #[default]
    SelectedAndAll,
    SelectedOnly,
}

/// A job with every file reference resolved and every sweep expanded.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub file: PathBuf,
    pub workspace: PathBuf,
    pub testenv: TestEnvSpec,
    pub runs: Vec<RunSpec>,
    pub rank: RankSpec,
}

/// One algorithm with one value for each hyperparameter.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub algorithm: String,
    pub paradigm: Paradigm,
    pub modules: Vec<Module>,
}

#[derive(Debug, Clone)]
pub struct Module {
    pub kind: ModuleType,
    pub name: String,
    pub url: Option<PathBuf>,
    pub params: BTreeMap<String, Value>,
}

impl RunSpec {
    pub fn module(&self, kind: ModuleType) -> Option<&Module> {
        self.modules.iter().find(|m| m.kind == kind)
    }

    /// `module-param=value` for every hyperparameter, in a stable order (ranking columns, file names).
    pub fn hyperparameters(&self) -> BTreeMap<String, String> {
        self.modules
            .iter()
            .flat_map(|m| {
                m.params
                    .iter()
                    .map(move |(k, v)| (format!("{}-{k}", m.kind.name()), value_text(v)))
            })
            .collect()
    }
}

pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

impl Module {
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        self.params
            .get(key)
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => bail!(
                    "{}.{key}: expected a string, got {}",
                    self.kind.name(),
                    value_text(other)
                ),
            })
            .transpose()
    }

    pub fn number(&self, key: &str) -> Result<Option<f64>> {
        self.params
            .get(key)
            .map(|v| {
                v.as_f64().with_context(|| {
                    format!(
                        "{}.{key}: expected a number, got {}",
                        self.kind.name(),
                        value_text(v)
                    )
                })
            })
            .transpose()
    }
}

/// Reads a job file and everything it refers to.
pub fn load(path: &Path) -> Result<Job> {
    let file: JobFile = read_yaml(path)?;
    let job = file.benchmarkingjob;
    let base = parent_dir(path);
    if job.test_object.kind != "algorithms" {
        bail!(
            "test_object.type `{}` is not supported (only `algorithms`)",
            job.test_object.kind
        );
    }
    let testenv = match job.testenv {
        InlineOrUrl::Inline(mut env) => {
            rebase_testenv(&mut env, &base);
            env
        }
        InlineOrUrl::Url(url) => {
            let path = resolve(&base, &url);
            let mut env = read_yaml::<TestEnvFile>(&path)?.testenv;
            rebase_testenv(&mut env, &parent_dir(&path));
            env
        }
    };
    let mut runs = Vec::new();
    for entry in job.test_object.algorithms {
        let (paradigm, modules, module_base) = match (&entry.url, entry.paradigm_type) {
            (Some(url), None) if entry.modules.is_empty() => {
                let path = resolve(&base, url);
                let body = read_yaml::<AlgorithmFile>(&path)?.algorithm;
                (body.paradigm_type, body.modules, parent_dir(&path))
            }
            (None, Some(paradigm)) => (paradigm, entry.modules, base.clone()),
            _ => bail!(
                "algorithm `{}`: give either `url` (an algorithm file) or `paradigm_type` with `modules`",
                entry.name
            ),
        };
        runs.extend(expand(&entry.name, paradigm, &modules, &module_base)?);
    }
    if runs.is_empty() {
        bail!("the job lists no algorithms");
    }
    if runs.iter().any(|r| r.paradigm == Paradigm::Lifelong) && testenv.lifelong.is_none() {
        bail!("a lifelong algorithm needs `testenv.lifelong.tasks`");
    }
    Ok(Job {
        name: job.name,
        file: path.to_path_buf(),
        workspace: PathBuf::from(expand_env(&job.workspace)),
        testenv,
        runs,
        rank: job.rank,
    })
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// `${VAR}` / `${VAR:-default}` from the environment, then relative to `base`.
fn resolve(base: &Path, text: &str) -> PathBuf {
    let expanded = PathBuf::from(expand_env(text));
    if expanded.is_absolute() {
        expanded
    } else {
        base.join(expanded)
    }
}

fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    resolve(base, &path.to_string_lossy())
}

fn rebase_testenv(env: &mut TestEnvSpec, base: &Path) {
    env.edge_url = env.edge_url.as_deref().map(expand_env);
    env.edge_token = env.edge_token.as_deref().map(expand_env);
    let dataset = &mut env.dataset;
    dataset.test_index = resolve_path(base, &dataset.test_index);
    if let Some(train) = &dataset.train_index {
        dataset.train_index = Some(resolve_path(base, train));
    }
    if let Some(lifelong) = &mut env.lifelong {
        for task in &mut lifelong.tasks {
            task.eval_index = resolve_path(base, &task.eval_index);
            task.stream_index = task.stream_index.as_ref().map(|p| resolve_path(base, p));
        }
    }
}

pub fn expand_env(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 2..start + len];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        out.push_str(&std::env::var(name).unwrap_or_else(|_| default.to_string()));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Every combination of the modules' hyperparameter values, first module's first parameter varying slowest.
fn expand(
    algorithm: &str,
    paradigm: Paradigm,
    modules: &[ModuleSpec],
    base: &Path,
) -> Result<Vec<RunSpec>> {
    let mut axes: Vec<(usize, String, Vec<Value>)> = Vec::new();
    for (i, module) in modules.iter().enumerate() {
        for map in &module.hyperparameters {
            for (param, values) in map {
                if values.values.is_empty() {
                    bail!(
                        "algorithm `{algorithm}`: {}.{param} has no values",
                        module.kind.name()
                    );
                }
                axes.push((i, param.clone(), values.values.clone()));
            }
        }
    }
    let combinations: usize = axes.iter().map(|(_, _, v)| v.len()).product();
    let mut runs = Vec::with_capacity(combinations);
    for mut n in 0..combinations {
        let mut chosen: Vec<Module> = modules
            .iter()
            .map(|m| Module {
                kind: m.kind,
                name: m.name.clone(),
                url: m.url.as_deref().map(|u| resolve(base, u)),
                params: BTreeMap::new(),
            })
            .collect();
        for (module, param, values) in axes.iter().rev() {
            let value = values[n % values.len()].clone();
            n /= values.len();
            chosen[*module].params.insert(param.clone(), value);
        }
        runs.push(RunSpec {
            algorithm: algorithm.to_string(),
            paradigm,
            modules: chosen,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn sweeps_expand_into_every_combination_and_urls_resolve() -> Result<()> {
        let dir = tempfile::tempdir()?;
        write(
            dir.path(),
            "testenv.yaml",
            "testenv:\n  dataset:\n    test_index: data/test.txt\n",
        );
        write(
            dir.path(),
            "collab.yaml",
            "algorithm:\n  paradigm_type: jointinference\n  modules:\n    - type: basemodel\n      name: edge-segmenter\n      url: model\n    - type: hard_example_mining\n      name: margin\n      hyperparameters:\n        - upload_ratio: {values: [0.1, 0.2, 0.3]}\n    - type: cloud_refinement\n      name: mobilesam\n      hyperparameters:\n        - fusion: {values: [ssa-vote, confident-vote]}\n",
        );
        let job = write(
            dir.path(),
            "job.yaml",
            "benchmarkingjob:\n  name: t\n  testenv: testenv.yaml\n  test_object:\n    type: algorithms\n    algorithms:\n      - name: edge\n        paradigm_type: edge-only\n        modules: [{type: basemodel, name: edge-segmenter}]\n      - name: collab\n        url: collab.yaml\n",
        );
        let job = load(&job)?;
        assert_eq!(
            job.testenv.dataset.test_index,
            dir.path().join("data/test.txt")
        );
        assert_eq!(job.runs.len(), 1 + 3 * 2);
        let collab: Vec<_> = job
            .runs
            .iter()
            .filter(|r| r.algorithm == "collab")
            .collect();
        assert!(collab.iter().all(|r| r.paradigm == Paradigm::Collaborative));
        let combos: std::collections::BTreeSet<_> = collab
            .iter()
            .map(|r| {
                let h = r.hyperparameters();
                (
                    h["hard_example_mining-upload_ratio"].clone(),
                    h["cloud_refinement-fusion"].clone(),
                )
            })
            .collect();
        assert_eq!(combos.len(), 6);
        assert_eq!(
            collab[0].module(ModuleType::Basemodel).unwrap().url,
            Some(dir.path().join("model"))
        );
        Ok(())
    }

    #[test]
    fn bad_jobs_say_what_is_wrong() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let unknown_field = write(
            dir.path(),
            "a.yaml",
            "benchmarkingjob:\n  name: t\n  testenv: {dataset: {test_index: x}}\n  test_object: {type: algorithms, algorithms: [{name: e, paradigm_type: edge-only, modules: [{type: basemodel, name: m, colour: red}]}]}\n",
        );
        assert!(format!("{:#}", load(&unknown_field).unwrap_err()).contains("colour"));
        let lifelong_without_tasks = write(
            dir.path(),
            "b.yaml",
            "benchmarkingjob:\n  name: t\n  testenv: {dataset: {test_index: x}}\n  test_object: {type: algorithms, algorithms: [{name: l, paradigm_type: lifelong}]}\n",
        );
        assert!(
            load(&lifelong_without_tasks)
                .unwrap_err()
                .to_string()
                .contains("lifelong")
        );
        Ok(())
    }

    #[test]
    fn environment_variables_expand_with_defaults() {
        assert_eq!(
            expand_env("${BENCH_TEST_UNSET_VAR:-../shared}/x"),
            "../shared/x"
        );
        assert_eq!(expand_env("plain"), "plain");
    }
}
