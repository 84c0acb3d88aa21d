//! Shared pieces of benchmark reports: the machine's load while measuring and README section replacement.

use std::path::Path;

use anyhow::Context;

/// The 1/5/15-minute load averages and whether the trainer is running, for the record next to timings.
pub fn cpu_load_note() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let trainer = if process_running("trainer") {
        "trainer RUNNING (timings inflated)"
    } else {
        "no trainer running"
    };
    format!("load average {load} on {cores} cores, {trainer}")
}

fn process_running(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
    })
}

/// Replaces the text between `<!-- {tag}:begin -->` and `<!-- {tag}:end -->` in `path` (appending the section
/// when absent, creating the file when missing), keeping everything else.
pub fn replace_readme_section(path: &Path, tag: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- {tag}:begin -->");
    let end = format!("<!-- {tag}:end -->");
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let section = format!("{begin}\n{body}\n{end}");
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &existing[..b], &existing[e + end.len()..])
        }
        _ => format!("{}\n\n{section}\n", existing.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_marked_section() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("bench-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("README.md");
        std::fs::write(
            &path,
            "# B\nintro\n<!-- x:begin -->\nold\n<!-- x:end -->\ntail\n",
        )?;
        replace_readme_section(&path, "x", "new")?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "# B\nintro\n<!-- x:begin -->\nnew\n<!-- x:end -->\ntail\n"
        );
        replace_readme_section(&path, "y", "other")?;
        assert!(
            std::fs::read_to_string(&path)?
                .ends_with("tail\n\n<!-- y:begin -->\nother\n<!-- y:end -->\n")
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
