//! Diagnosis of one pod: why it does not run as it should, and whether a grace period has
//! made that fatal.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{PodObs, Settings, reason};

pub(super) fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.chars().take(1024).collect()
}

/// One line for a container's termination message, which may be a log tail: its last
/// non-empty line (where a program's final error is), after the line that introduced the
/// last Python traceback when there is one ("Some of the models failed to load during
/// startup! mlserver.parallel.errors.WorkerError: builtins.KeyError: 110").
pub(super) fn summary_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let Some(last) = lines.last() else {
        return String::new();
    };
    let intro = lines
        .iter()
        .rposition(|l| *l == "Traceback (most recent call last):")
        .and_then(|i| i.checked_sub(1))
        .map(|i| lines[i]);
    let line = match intro {
        Some(intro) => format!("{intro} {last}"),
        None => (*last).to_owned(),
    };
    line.chars().take(1024).collect()
}

/// Why one pod is not running as it should.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Problem {
    pub pod: String,
    pub reason: String,
    pub message: String,
    pub fatal: bool,
    /// When a grace period will make it fatal; `None` when time alone changes nothing.
    pub fatal_in: Option<Duration>,
}

pub(super) fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

pub(super) fn diagnose(pod: &PodObs, now: Timestamp, settings: &Settings) -> Option<Problem> {
    let grace = |since: Option<Timestamp>, grace: Duration| {
        let waited = since.map_or(Duration::ZERO, |s| elapsed(s, now));
        (waited >= grace, Some(grace.saturating_sub(waited)))
    };
    let problem = |reason: &str, message: String, (fatal, fatal_in): (bool, Option<Duration>)| Problem {
        pod: pod.name.clone(),
        reason: reason.to_owned(),
        message: format!("pod {}: {message}", pod.name),
        fatal,
        fatal_in,
    };
    if let Some((message, since)) = &pod.unschedulable {
        return Some(problem(
            reason::UNSCHEDULABLE,
            message.clone(),
            grace(since.or(pod.created), settings.unschedulable_grace),
        ));
    }
    let last_exit = pod
        .terminated
        .as_ref()
        .map(|t| {
            let msg = summary_line(&t.message);
            let msg = if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            };
            format!("last exit {} (exit code {}){msg}", t.reason, t.exit_code)
        })
        .unwrap_or_default();
    if let Some((container, reason, message, image)) = &pod.waiting {
        return Some(match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => problem(
                reason::IMAGE_PULL_BACK_OFF,
                format!("container {container} cannot pull image {image}: {reason}: {message}"),
                if reason == "InvalidImageName" {
                    (true, None)
                } else {
                    grace(pod.created, settings.image_pull_grace)
                },
            ),
            "CrashLoopBackOff" => {
                let oom = pod.terminated.as_ref().is_some_and(|t| t.reason == "OOMKilled");
                problem(
                    if oom {
                        reason::OOM_KILLED
                    } else {
                        reason::CRASH_LOOP_BACK_OFF
                    },
                    format!(
                        "container {container} is crash-looping after {} restarts, {last_exit}",
                        pod.restarts
                    ),
                    (pod.restarts >= settings.crash_loop_restarts, None),
                )
            }
            _ => problem(
                reason,
                format!("container {container} is waiting: {reason}: {message}"),
                grace(pod.created, settings.image_pull_grace),
            ),
        });
    }
    // Still being started: the kubelet's Warning Events say what holds it (a volume it cannot
    // mount or attach, a sandbox it cannot create). Often transient, so only after a grace.
    if pod.phase == "Pending"
        && let Some(w) = &pod.warning
    {
        let why = match w.reason.as_str() {
            "FailedAttachVolume" => reason::FAILED_ATTACH_VOLUME,
            "FailedCreatePodSandBox" => reason::FAILED_CREATE_POD_SANDBOX,
            _ => reason::FAILED_MOUNT,
        };
        return Some(problem(
            why,
            format!("cannot start: {}: {}", w.reason, w.message),
            grace(w.first.or(pod.created), settings.storage_grace),
        ));
    }
    if pod.phase == "Failed" && !pod.download {
        return Some(problem(
            reason::POD_FAILED,
            format!("pod failed, {last_exit}"),
            (true, None),
        ));
    }
    if pod.terminated.as_ref().is_some_and(|t| t.reason == "OOMKilled") && !pod.ready {
        return Some(problem(
            reason::OOM_KILLED,
            format!("container was OOMKilled, {last_exit}"),
            (pod.restarts >= settings.crash_loop_restarts, None),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::summary_line;

    #[test]
    fn a_termination_message_is_summed_up_by_its_last_line_and_its_tracebacks_introduction() {
        let mlserver = "An error occurred processing a model update of type 'Load'.\n\
                        Traceback (most recent call last):\n  File \"worker.py\", line 158\n\
                        KeyError: 110\n\
                        Some of the models failed to load during startup!\n\
                        Traceback (most recent call last):\n  File \"server.py\", line 125, in start\n\
                        mlserver.parallel.errors.WorkerError: builtins.KeyError: 110\n\n";
        assert_eq!(
            summary_line(mlserver),
            "Some of the models failed to load during startup! \
             mlserver.parallel.errors.WorkerError: builtins.KeyError: 110"
        );
        assert_eq!(
            summary_line("DownloadFailed: HTTP 404 Not Found"),
            "DownloadFailed: HTTP 404 Not Found"
        );
        assert_eq!(
            summary_line("starting\nlistening\nfatal: cannot bind :8080\n"),
            "fatal: cannot bind :8080"
        );
        assert_eq!(
            summary_line("Traceback (most recent call last):\nValueError: x"),
            "ValueError: x"
        );
        assert_eq!(summary_line(" \n"), "");
    }
}
