//! The released binary keeps ONNX Runtime's telemetry off: a robot's inference service writes no device id or event
//! store and calls no collector, whatever the environment it is started from.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{http_client, model_dir_or_skip, wait_ready};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every file under `root`, relative to it.
fn files_under(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    files
}

#[tokio::test]
async fn onnx_runtime_telemetry_stays_off() {
    let test = "onnx_runtime_telemetry_stays_off";
    let Some(model_dir) = model_dir_or_skip(test) else {
        return;
    };
    // Where ONNX Runtime's uploader writes when it runs: the cache home, the temporary directory, the working one.
    let sandbox = tempfile::tempdir().unwrap();
    let (home, cache, tmp, work) = (
        sandbox.path().join("home"),
        sandbox.path().join("cache"),
        sandbox.path().join("tmp"),
        sandbox.path().join("work"),
    );
    for dir in [&home, &cache, &tmp, &work] {
        std::fs::create_dir(dir).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_edge-infer"))
            .args(["serve", "--listen", &listen, "--model-dir"])
            .arg(&model_dir)
            .current_dir(&work)
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", &cache)
            .env("TMPDIR", &tmp)
            .env_remove("ORT_DISABLE_TELEMETRY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("edge-infer starts"),
    );
    wait_ready(&http_client(), &format!("http://{listen}")).await;
    // The model is loaded, so ONNX Runtime is too; its uploader writes as it starts.
    assert_eq!(files_under(sandbox.path()), Vec::<String>::new());
}
