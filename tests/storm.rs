//! Many models at once on the local cluster's own provisioner, which binds claims slowly under
//! load: a claim that is being provisioned is progress, so no model may show `Failed` on its
//! way to Ready. Its own binary, so its storm of claims and pods slows no other test.

mod operator;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, watcher};
use mlmodel_operator::api::{MLModel, Phase};

const MODELS: usize = 150;

#[tokio::test]
async fn a_hundred_and_fifty_models_at_once_reach_ready_and_none_is_failed_on_the_way() {
    operator::shared();
    let ns = support::namespace("storm").await;
    let models = ns.api::<MLModel>();
    // Watch before applying, so every status the models pass through is seen.
    let mut stream = watcher(models.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let yaml: Vec<String> = (0..MODELS)
        .map(|i| {
            format!(
                "apiVersion: oda.tmforum.org/v1beta1\nkind: MLModel\nmetadata:\n  name: s{i}\nspec:\n  \
                 modelURL: https://models.example.com/s{i}/model.tar.gz\n"
            )
        })
        .collect();
    let started = Instant::now();
    ns.apply_yaml(&yaml.join("---\n"));

    let mut ready = BTreeSet::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while ready.len() < MODELS {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some(item)) = next else {
            panic!(
                "{} of {MODELS} models Ready after {:?}; failed on the way: {failed:#?}",
                ready.len(),
                started.elapsed()
            );
        };
        let Ok(m) = item else { continue };
        let status = m.status.clone().unwrap_or_default();
        match status.phase {
            Some(Phase::Failed | Phase::UpdateFailed) => {
                let failure = status.last_failure.map(|f| format!("{}: {}", f.reason, f.message));
                failed.insert(m.name_any(), failure.unwrap_or_default());
            }
            Some(Phase::Ready) => {
                ready.insert(m.name_any());
            }
            _ => {}
        }
    }
    eprintln!("{MODELS} models Ready in {:?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "{} models showed Failed on their way to Ready: {failed:#?}",
        failed.len()
    );
}
