//! An API server that does not stream a watch's initial objects (the `WatchList` feature gate
//! off, as by default on Kubernetes 1.33) is listed instead: an operator told to ask
//! (`--initial-list=auto`) asks once at start-up, says which it chose, and finds the models
//! that were there before it and those applied after.
//!
//! Own test binary: its cluster's API server runs with `WatchList=false`.

mod operator;
mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use support::iris::model_yaml;

const TIMEOUT: Duration = Duration::from_secs(90);

fn model(name: &str) -> String {
    model_yaml(name, &format!("https://models.example/{name}.tar.gz"), None, "")
}

#[tokio::test]
async fn an_api_server_that_does_not_stream_lists_is_listed() {
    support::cluster_with_api_feature_gates("WatchList=false");
    operator::install();
    let ns = support::namespace("initial-list").await;
    ns.apply_yaml(&model("before"));

    let op = operator::start("lister", &[("INITIAL_LIST", "auto")]);
    op.wait_ready(TIMEOUT);
    let logs = op.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("watching") && l.contains("initial_list=list")),
        "the operator says it lists:\n{logs}"
    );
    ns.apply_yaml(&model("after"));

    let jobs = ns.api::<Job>();
    support::wait_for(&jobs, "before-download-1", TIMEOUT, |_| true).await;
    support::wait_for(&jobs, "after-download-1", TIMEOUT, |_| true).await;
}
