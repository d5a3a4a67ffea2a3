//! The termination line: what the downloader writes (any message becomes one bounded line
//! without control characters) and what the operator reads back from a failed download pod
//! (any bytes become one bounded line of the model's status).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mlmodel_operator::api::{MLModel, Phase};
use mlmodel_operator::download::DownloadError;
use mlmodel_operator::lifecycle::observe::{JobObs, PvcObs, Terminated};
use mlmodel_operator::lifecycle::{Observed, PodObs, Settings, decide};
use mlmodel_operator::resources;

/// Longest status message the operator may derive from one termination message.
const MAX_STATUS_CHARS: usize = 1024 + 64;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let line = DownloadError::InvalidArchive(text.to_string()).termination_line();
    assert!(line.len() <= 1024, "{} bytes", line.len());
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(line.starts_with("InvalidArchive: "), "{line:?}");
    let status = status_message(&line);
    assert_eq!(status, format!("download failed: {}", line.trim()));

    let status = status_message(&text);
    assert!(!status.contains('\n'), "{status:?}");
    assert!(
        status.chars().count() <= MAX_STATUS_CHARS,
        "{} chars",
        status.chars().count()
    );
});

/// The status message the operator writes for a download pod that failed with `message`.
fn status_message(message: &str) -> String {
    let model: MLModel = serde_json::from_value(serde_json::json!({
        "apiVersion": "oda.tmforum.org/v1beta1",
        "kind": "MLModel",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "0b0c7a52-iris", "generation": 1,
                     "finalizers": [mlmodel_operator::api::FINALIZER]},
        "spec": {"modelURL": "https://h/m.tar.gz", "storageSize": "1Gi", "framework": "tensorflow"}
    }))
    .expect("a valid model");
    let observed = Observed {
        pvc: Some(PvcObs {
            phase: "Bound".to_owned(),
            deleting: false,
        }),
        jobs: vec![JobObs {
            name: resources::job_name("iris", 1),
            version: 1,
            source: Some(resources::source_digest(&model)),
            succeeded: false,
            failed: Some((
                "BackoffLimitExceeded".to_owned(),
                "Job has reached the backoff limit".to_owned(),
            )),
            deleting: false,
        }],
        pods: vec![PodObs {
            name: "iris-download-1-x7k2p".to_owned(),
            download: true,
            version: Some(1),
            phase: "Failed".to_owned(),
            ready: false,
            deleting: false,
            created: None,
            unschedulable: None,
            waiting: None,
            terminated: Some(Terminated {
                container: "download".to_owned(),
                reason: "Error".to_owned(),
                exit_code: 1,
                message: message.to_owned(),
            }),
            restarts: 0,
        }],
        ..Observed::default()
    };
    let decision = decide(&model, &observed, &Settings::default());
    assert_eq!(decision.status.phase, Some(Phase::Failed));
    decision.status.message.unwrap_or_default()
}
