//! The CLI as a user runs it: the binary against a running server.

use std::process::Command;

use crate::common::{TestServer, config, models_dir};

fn cotejo(url: &str, args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_cotejo")).args(args).args(["--server", url]).output().expect("run cotejo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let faces = models_dir().join("fixtures/faces");
    let f = |n: &str| faces.join(n).display().to_string();
    let url = server.url.clone();
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                cotejo(&url, &a)
            })
            .await
            .expect("join")
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();

    let (ok, out, err) = run(s(&["enroll", "--subject", "obama", "--face", &f("obama3.jpg")])).await;
    assert!(ok, "{err}");
    assert!(out.contains("enrolled obama"), "{out}");
    let (ok, _, err) = run(s(&["enroll", "--subject", "biden", "--face", &f("biden.jpg")])).await;
    assert!(ok, "{err}");

    let (ok, out, err) = run(s(&["identify", "--face", &f("obama2.jpg"), "--top", "2", "--json"])).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["decision"], true);
    assert_eq!(v["candidates"][0]["subject_id"], "obama");
    assert!(
        v["candidates"][0]["score"].as_f64().expect("score") > v["candidates"][1]["score"].as_f64().expect("score")
    );

    let (ok, out, _) = run(s(&["verify", "--subject", "biden", "--face", &f("obama.jpg"), "--json"])).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["decision"], false);

    let (ok, out, _) = run(s(&["stats", "--json"])).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["subjects"], 2);
    assert_eq!(v["face_templates"], 2);

    // Failures exit non-zero with the server's message.
    let (ok, _, err) = run(s(&["enroll", "--subject", "obama", "--face", &f("obama3.jpg")])).await;
    assert!(!ok);
    assert!(err.contains("AlreadyExists") && err.contains("obama"), "{err}");
    let (ok, _, err) = run(s(&["identify", "--finger", &format!("2={}", f("biden.jpg"))])).await;
    assert!(!ok);
    assert!(err.contains("InvalidArgument") && err.contains("grayscale"), "{err}");
    let (ok, out, _) = run(s(&["delete", "--subject", "obama"])).await;
    assert!(ok && out.contains("deleted obama"), "{out}");
    server.stop().await;
}
