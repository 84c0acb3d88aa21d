//! Ranking in Ianvs's shape: `all_rank.csv` (every run, every metric and hyperparameter) and `selected_rank.csv`
//! (the columns and paradigms `rank.selected_dataitem` names), plus the Markdown leaderboard.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::RunResult;
use super::job::{Job, ModuleType, SaveMode, SortOrder};

/// Metrics shown first (in this order) when present; any others follow alphabetically.
const PREFERRED_METRICS: [&str; 13] = [
    "miou",
    "pixel_accuracy",
    "edge_miou",
    "samples_transfer_ratio",
    "edge_latency_p50_ms",
    "edge_latency_p95_ms",
    "edge_latency_p99_ms",
    "cloud_latency_p50_ms",
    "cloud_latency_p95_ms",
    "cloud_latency_p99_ms",
    "bytes_up_per_frame",
    "bytes_down_per_frame",
    "task_avg_acc",
];
const MODULE_COLUMNS: [ModuleType; 4] = [
    ModuleType::Basemodel,
    ModuleType::HardExampleMining,
    ModuleType::CloudRefinement,
    ModuleType::LifelongTraining,
];
/// Leaderboard columns when the job selects `all` metrics.
const LEADERBOARD_METRICS: [&str; 12] = [
    "miou",
    "pixel_accuracy",
    "samples_transfer_ratio",
    "edge_latency_p50_ms",
    "cloud_latency_p50_ms",
    "bytes_up_per_frame",
    "edge_to_cloud_bytes_per_frame",
    "task_avg_acc",
    "bwt",
    "fwt",
    "candidate_new_task_miou",
    "candidate_old_task_miou",
];

/// Writes the rank files into `out` and returns the Markdown leaderboard.
pub fn write(out: &Path, job: &Job, results: &[RunResult]) -> Result<String> {
    let ranked = sorted(results, job);
    let metrics = metric_columns(&ranked);
    let hyperparameters: BTreeSet<String> = ranked
        .iter()
        .flat_map(|r| r.hyperparameters.keys().cloned())
        .collect();
    let hyperparameters: Vec<String> = hyperparameters.into_iter().collect();
    let modules: Vec<&str> = MODULE_COLUMNS.iter().map(|m| m.name()).collect();
    let all = Table {
        metrics: metrics.clone(),
        modules: modules.clone(),
        hyperparameters: hyperparameters.clone(),
    };
    let selection = &job.rank.selected_dataitem;
    let chosen = |selected: &[String], available: &[String]| -> Vec<String> {
        if selected.iter().any(|s| s == "all") {
            available.to_vec()
        } else {
            available
                .iter()
                .filter(|a| {
                    selected
                        .iter()
                        .any(|s| *a == s || a.ends_with(&format!("-{s}")))
                })
                .cloned()
                .collect()
        }
    };
    let module_names: Vec<String> = modules.iter().map(|m| m.to_string()).collect();
    let selected = Table {
        metrics: chosen(&selection.metrics, &metrics),
        modules: chosen(&selection.modules, &module_names)
            .iter()
            .map(|m| {
                *modules
                    .iter()
                    .find(|n| **n == m)
                    .expect("chosen from modules")
            })
            .collect(),
        hyperparameters: chosen(&selection.hyperparameters, &hyperparameters),
    };
    let paradigm_selected = |r: &RunResult| {
        selection
            .paradigms
            .iter()
            .any(|p| p == "all" || p == r.paradigm.name())
    };
    let selected_rows: Vec<&RunResult> = ranked
        .iter()
        .copied()
        .filter(|r| paradigm_selected(r))
        .collect();
    if job.rank.save_mode == SaveMode::SelectedAndAll {
        all.write_csv(&out.join("all_rank.csv"), &ranked)?;
    }
    selected.write_csv(&out.join("selected_rank.csv"), &selected_rows)?;
    let leaderboard_metrics: Vec<String> = if selection.metrics.iter().any(|m| m == "all") {
        LEADERBOARD_METRICS
            .iter()
            .map(|m| m.to_string())
            .filter(|m| metrics.contains(m))
            .collect()
    } else {
        selected.metrics.clone()
    };
    Ok(leaderboard(&selected_rows, &leaderboard_metrics))
}

struct Table<'a> {
    metrics: Vec<String>,
    modules: Vec<&'a str>,
    hyperparameters: Vec<String>,
}

impl Table<'_> {
    fn write_csv(&self, path: &Path, rows: &[&RunResult]) -> Result<()> {
        let mut writer = csv::Writer::from_path(path)?;
        let mut header = vec!["rank".to_string(), "algorithm".to_string()];
        header.extend(self.metrics.iter().cloned());
        header.push("paradigm".into());
        header.extend(self.modules.iter().map(|m| m.to_string()));
        header.extend(self.hyperparameters.iter().cloned());
        header.extend(["time".to_string(), "url".to_string()]);
        writer.write_record(&header)?;
        for (i, run) in rows.iter().enumerate() {
            let mut record = vec![(i + 1).to_string(), run.algorithm.clone()];
            record.extend(self.metrics.iter().map(|m| {
                run.metrics
                    .get(m)
                    .map_or(String::new(), |v| format_metric(*v))
            }));
            record.push(run.paradigm.name().into());
            record.extend(
                self.modules
                    .iter()
                    .map(|m| run.modules.get(*m).cloned().unwrap_or_default()),
            );
            record.extend(
                self.hyperparameters
                    .iter()
                    .map(|h| run.hyperparameters.get(h).cloned().unwrap_or_default()),
            );
            record.push(run.finished.clone());
            record.push(run.dir.display().to_string());
            writer.write_record(&record)?;
        }
        writer.flush()?;
        Ok(())
    }
}

fn format_metric(value: f64) -> String {
    if value.is_nan() {
        String::new()
    } else if value.fract() == 0.0 && value.abs() >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.4}")
    }
}

/// Runs ordered by the job's `sort_by` keys; a run without a key's metric goes after those with it.
fn sorted<'a>(results: &'a [RunResult], job: &Job) -> Vec<&'a RunResult> {
    let mut ranked: Vec<&RunResult> = results.iter().collect();
    ranked.sort_by(|a, b| {
        for key in &job.rank.sort_by {
            for (metric, order) in key {
                let (x, y) = (a.metrics.get(metric), b.metrics.get(metric));
                let ordering = match (x, y) {
                    (Some(x), Some(y)) => match order {
                        SortOrder::Descend => y.total_cmp(x),
                        SortOrder::Ascend => x.total_cmp(y),
                    },
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
        }
        a.id.cmp(&b.id)
    });
    ranked
}

fn metric_columns(results: &[&RunResult]) -> Vec<String> {
    let present: BTreeSet<&str> = results
        .iter()
        .flat_map(|r| r.metrics.keys().map(String::as_str))
        .collect();
    let mut columns: Vec<String> = PREFERRED_METRICS
        .iter()
        .filter(|m| present.contains(*m))
        .map(|m| m.to_string())
        .collect();
    columns.extend(
        present
            .iter()
            .filter(|m| !PREFERRED_METRICS.contains(m))
            .map(|m| m.to_string()),
    );
    columns
}

fn leaderboard(rows: &[&RunResult], metrics: &[String]) -> String {
    let mut out = format!(
        "| rank | algorithm | paradigm | {} | hyperparameters |\n|---|---|---|{}---|\n",
        metrics.join(" | "),
        "---|".repeat(metrics.len())
    );
    for (i, run) in rows.iter().enumerate() {
        let cells: Vec<String> = metrics
            .iter()
            .map(|m| run.metrics.get(m).map_or("-".into(), |v| format_metric(*v)))
            .collect();
        let hyperparameters: Vec<String> = run
            .hyperparameters
            .iter()
            .filter(|(k, _)| !k.ends_with("-settings"))
            .map(|(k, v)| format!("{}={v}", k.split_once('-').map_or(k.as_str(), |(_, p)| p)))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            run.algorithm,
            run.paradigm.name(),
            cells.join(" | "),
            hyperparameters.join(", ")
        );
    }
    if let Some(first) = rows.first() {
        let _ = write!(
            out,
            "\nPer-class IoU\n\n| rank | algorithm | {} |\n|---|---|{}\n",
            first.class_names.join(" | "),
            "---|".repeat(first.class_names.len())
        );
        for (i, run) in rows.iter().enumerate() {
            let cells: Vec<String> = run
                .per_class_iou
                .iter()
                .map(|v| v.map_or("-".into(), |v| format!("{v:.3}")))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                i + 1,
                run.algorithm,
                cells.join(" | ")
            );
        }
    }
    for run in rows.iter().filter(|r| r.lifelong.is_some()) {
        let matrix = run.lifelong.as_ref().expect("filtered");
        let _ = write!(
            out,
            "\nAccuracy matrix (mIoU) of `{}`: BWT {:+.4}, FWT {:+.4}, task_avg_acc {:.4}\n\n{}",
            run.id,
            matrix.bwt(),
            matrix.fwt(),
            matrix.task_avg_acc(),
            matrix.markdown()
        );
    }
    out
}
