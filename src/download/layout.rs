//! What each model server needs to find in a version directory, checked once the artifact is
//! unpacked and before anything serves it: a wrong layout fails the download with a reason
//! naming what is missing and what was found, instead of a server that never turns ready.

use std::path::Path;

use super::DownloadError;
use crate::api::Framework;

/// Entries listed in an `InvalidModelLayout` message, at most.
const LISTED: usize = 12;

/// Checks that `root` (the unpacked version directory) holds what `framework`'s server loads.
pub fn check(framework: Framework, root: &Path, ignore: &str) -> Result<(), DownloadError> {
    let mut names = entries(root)?;
    names.retain(|n| n != ignore);
    let has = |name: &str| names.iter().any(|n| n == name);
    let has_any = |wanted: &[&str]| wanted.iter().any(|w| has(w));
    let missing = match framework {
        Framework::Custom => None,
        Framework::Tensorflow => {
            (!has_any(&["saved_model.pb", "saved_model.pbtxt"])).then(|| "a SavedModel (saved_model.pb)".to_owned())
        }
        Framework::Triton => {
            let version_dir = names.iter().any(|n| {
                n.strip_suffix('/')
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            });
            match (has("config.pbtxt"), version_dir) {
                (true, true) => None,
                (false, true) => Some("config.pbtxt".to_owned()),
                (true, false) => Some("a numbered version directory (1/)".to_owned()),
                (false, false) => Some("config.pbtxt and a numbered version directory (1/)".to_owned()),
            }
        }
        Framework::Mlserver => (!has("model-settings.json")).then(|| "model-settings.json".to_owned()),
        Framework::Sklearn => mlserver_model(&names, &["model.joblib", "model.pkl", "model.pickle"]),
        Framework::Xgboost => mlserver_model(&names, &["model.bst", "model.json", "model.ubj"]),
    };
    let Some(missing) = missing else {
        return Ok(());
    };
    let found = if names.is_empty() {
        "nothing".to_owned()
    } else {
        let mut shown: Vec<&str> = names.iter().take(LISTED).map(String::as_str).collect();
        if names.len() > LISTED {
            shown.push("...");
        }
        shown.join(", ")
    };
    Err(DownloadError::InvalidModelLayout(format!(
        "{} needs {missing}; found: {found}",
        framework.as_str()
    )))
}

/// MLServer's runtimes load `model-settings.json`, or without it a model file of theirs.
fn mlserver_model(names: &[String], files: &[&str]) -> Option<String> {
    let found = names
        .iter()
        .any(|n| n == "model-settings.json" || files.contains(&n.as_str()));
    (!found).then(|| format!("model-settings.json or one of {}", files.join(", ")))
}

/// The names in `root`, directories with a trailing `/`, sorted.
fn entries(root: &Path) -> Result<Vec<String>, DownloadError> {
    let read =
        std::fs::read_dir(root).map_err(|e| DownloadError::from_io(&format!("cannot list {}", root.display()), &e))?;
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| DownloadError::from_io(&format!("cannot list {}", root.display()), &e))?;
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            name.push('/');
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for f in files {
            let path = d.path().join(f);
            if let Some(dir) = f.strip_suffix('/') {
                std::fs::create_dir_all(d.path().join(dir)).expect("mkdir");
            } else {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(path, b"x").expect("write");
            }
        }
        d
    }

    fn line(framework: Framework, files: &[&str]) -> Option<String> {
        let d = dir(files);
        check(framework, d.path(), ".marker")
            .err()
            .map(|e| e.termination_line())
    }

    #[test]
    fn each_framework_accepts_what_its_server_loads() {
        for (framework, files) in [
            (Framework::Tensorflow, &["saved_model.pb", "variables/"][..]),
            (Framework::Triton, &["config.pbtxt", "1/model.onnx"][..]),
            (Framework::Mlserver, &["model-settings.json"][..]),
            (Framework::Sklearn, &["model.joblib"][..]),
            (Framework::Sklearn, &["model-settings.json", "iris.bin"][..]),
            (Framework::Xgboost, &["model.bst"][..]),
            (Framework::Custom, &[][..]),
        ] {
            assert_eq!(line(framework, files), None, "{framework:?} with {files:?}");
        }
    }

    #[test]
    fn a_wrong_layout_names_what_is_missing_and_what_was_found() {
        assert_eq!(
            line(Framework::Tensorflow, &["model.onnx", "README.md", ".marker"]).as_deref(),
            Some("InvalidModelLayout: tensorflow needs a SavedModel (saved_model.pb); found: README.md, model.onnx")
        );
        assert_eq!(
            line(Framework::Sklearn, &["weights/"]).as_deref(),
            Some(
                "InvalidModelLayout: sklearn needs model-settings.json or one of model.joblib, model.pkl, \
                 model.pickle; found: weights/"
            )
        );
        assert_eq!(
            line(Framework::Triton, &["config.pbtxt", "v1/"]).as_deref(),
            Some("InvalidModelLayout: triton needs a numbered version directory (1/); found: config.pbtxt, v1/")
        );
        assert_eq!(
            line(Framework::Mlserver, &[]).as_deref(),
            Some("InvalidModelLayout: mlserver needs model-settings.json; found: nothing")
        );
    }

    #[test]
    fn long_listings_are_cut() {
        let files: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
        let refs: Vec<&str> = files.iter().map(String::as_str).collect();
        let msg = line(Framework::Tensorflow, &refs).expect("invalid");
        assert!(msg.ends_with("f11, ..."), "{msg}");
    }
}
