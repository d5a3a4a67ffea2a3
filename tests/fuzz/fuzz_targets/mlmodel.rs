//! Decoding malformed MLModels: any bytes either fail to decode or give a model that is
//! validated, and a valid one is decided on and its children built, without a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mlmodel_operator::api::MLModel;
use mlmodel_operator::lifecycle::observe::PvcObs;
use mlmodel_operator::lifecycle::{Observed, Settings, decide, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(mut model) = serde_json::from_slice::<MLModel>(data) else {
        return;
    };
    let _ = serde_json::to_vec(&model).expect("a decoded model encodes");
    if validate(&model).is_err() {
        return;
    }
    // What the API server always sets on a stored object.
    let meta = &mut model.metadata;
    meta.name.get_or_insert_with(|| "m".to_owned());
    meta.namespace.get_or_insert_with(|| "ml".to_owned());
    meta.uid.get_or_insert_with(|| "uid".to_owned());
    meta.generation.get_or_insert(1);
    let settings = Settings::default();
    for pvc in [None, Some("Bound")] {
        let observed = Observed {
            pvc: pvc.map(|phase| PvcObs {
                phase: phase.to_owned(),
                deleting: false,
            }),
            ..Observed::default()
        };
        let _ = decide(&model, &observed, &settings);
    }
});
