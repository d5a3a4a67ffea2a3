//! `mlmodel-operator`: the operator (`run`), its CRD (`crd`) and the model downloader
//! (`download`) in one binary, so the download Job runs the operator's own image.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::ResourceRequirements;
use mlmodel_operator::actors::SupervisionSettings;
use mlmodel_operator::api::MLModel;
use mlmodel_operator::download::{self, DownloadArgs};
use mlmodel_operator::leader::LeaseSettings;
use mlmodel_operator::lifecycle::Settings;
use mlmodel_operator::operator::{self, InitialList, RunSettings, WatchScope};
use mlmodel_operator::resources::{self, BuildSettings};
use mlmodel_operator::telemetry::{self, LogFormat};
use mlmodel_operator::traceview::{self, TraceArgs};

/// Deploys machine-learning models described by MLModel resources.
#[derive(Parser, Debug)]
#[command(name = "mlmodel-operator", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the current kubeconfig context or the in-cluster config.
    Run(Box<RunArgs>),
    /// Print the MLModel CustomResourceDefinition as YAML.
    Crd,
    /// Download a model artifact into a volume (what the download Job runs).
    Download(Box<DownloadArgs>),
    /// Draw a model's current rollout trace, fetched from Jaeger, as a waterfall.
    Trace(TraceArgs),
}

/// Flags of `mlmodel-operator run`.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Image of the download Job. Unset, it is the operator's own: the image of this pod's
    /// container when running in a cluster (read from its Pod, POD_NAME in POD_NAMESPACE),
    /// else `mlmodel-operator:<version>`.
    #[arg(long, env = "DOWNLOADER_IMAGE")]
    downloader_image: Option<String>,

    /// Pull policy of the download Job's image.
    #[arg(long, env = "DOWNLOADER_PULL_POLICY", default_value = "IfNotPresent")]
    downloader_pull_policy: String,

    /// Resource requests of a download pod whose model sets none, as name=quantity pairs.
    #[arg(long, env = "DOWNLOADER_REQUESTS", default_value = resources::DEFAULT_DOWNLOADER_REQUESTS)]
    downloader_requests: String,

    /// Resource limits of a download pod whose model sets none, as name=quantity pairs.
    #[arg(long, env = "DOWNLOADER_LIMITS", default_value = resources::DEFAULT_DOWNLOADER_LIMITS)]
    downloader_limits: String,

    /// OTLP endpoint the download Jobs export their spans to, where it differs from the
    /// operator's own `OTEL_EXPORTER_OTLP_ENDPOINT` (the default).
    #[arg(long, env = "DOWNLOADER_OTLP_ENDPOINT")]
    downloader_otlp_endpoint: Option<String>,

    /// OTLP protocol of that endpoint (`grpc`, `http/protobuf`); the operator's own by default.
    #[arg(long, env = "DOWNLOADER_OTLP_PROTOCOL")]
    downloader_otlp_protocol: Option<String>,

    /// Let download Jobs of models without `credentials` use the node's instance or
    /// web-identity credentials (the downloader's `--ambient-credentials`). Off, such a
    /// download is anonymous: a model's author can read only what its referenced Secret grants.
    #[arg(long, env = "ALLOW_AMBIENT_CREDENTIALS")]
    allow_ambient_credentials: bool,

    /// Namespaces to watch and write, comma-separated; empty watches the whole cluster. With a
    /// list, Roles in those namespaces are enough (deploy/namespaced/).
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,

    /// DNS suffix of the cluster, used in `status.serviceEndpoint`.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,

    /// Seconds a serving pod may stay unschedulable before the model is Failed.
    #[arg(long, env = "UNSCHEDULABLE_GRACE_SECONDS", default_value_t = 30)]
    unschedulable_grace_seconds: u64,

    /// Seconds an image may fail to pull before the model is Failed.
    #[arg(long, env = "IMAGE_PULL_GRACE_SECONDS", default_value_t = 120)]
    image_pull_grace_seconds: u64,

    /// Seconds a claim's provisioning, or a pod's volume mount, may keep failing before the
    /// model is Failed.
    #[arg(long, env = "STORAGE_GRACE_SECONDS", default_value_t = 120)]
    storage_grace_seconds: u64,

    /// Restarts of a crash-looping serving container before the model is Failed.
    #[arg(long, env = "CRASH_LOOP_RESTARTS", default_value_t = 3)]
    crash_loop_restarts: i32,

    /// Seconds deletion waits for children before it forces them.
    #[arg(long, env = "FORCE_DELETE_AFTER_SECONDS", default_value_t = 60)]
    force_delete_after_seconds: u64,

    /// Restarts of a model's actor within the window before the model is marked Failed.
    #[arg(long, env = "MAX_ACTOR_RESTARTS", default_value_t = 5)]
    max_actor_restarts: usize,

    /// Window, in seconds, over which actor restarts are counted.
    #[arg(long, env = "ACTOR_RESTART_WINDOW_SECONDS", default_value_t = 300)]
    actor_restart_window_seconds: u64,

    /// Elect a leader among replicas through a Lease; off runs a single active replica.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set)]
    leader_elect: bool,

    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "mlmodel-operator")]
    lease_name: String,

    /// Namespace of the Lease; the operator's own namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mlmodel-system")]
    lease_namespace: String,

    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Seconds a Lease stays valid after its last renewal.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,

    /// Seconds the leader keeps acting without a successful renewal; less than the duration.
    #[arg(long, env = "LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    lease_renew_deadline_seconds: u64,

    /// Seconds between attempts to acquire or renew the Lease.
    #[arg(long, env = "LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    lease_retry_period_seconds: u64,

    /// Seconds a graceful shutdown may take.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 20)]
    shutdown_timeout_seconds: u64,

    /// Seconds between two reconciles of a model that nothing woke (jittered ±10%): the
    /// safety net for a missed event.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,

    /// Client-side rate limit of the operator's API writes, in requests per second.
    #[arg(long, env = "API_QPS", default_value_t = 200.0)]
    api_qps: f64,

    /// Writes allowed in a burst above --api-qps.
    #[arg(long, env = "API_BURST", default_value_t = 400)]
    api_burst: u32,

    /// How each watch gets the objects that exist when it starts: `list` (one response per
    /// kind), `stream` (one by one, in a watch), or `auto` (stream where the API server serves
    /// it).
    #[arg(long, env = "INITIAL_LIST", value_enum, default_value = "list")]
    initial_list: InitialList,
}

impl RunArgs {
    fn into_settings(self) -> Result<RunSettings, String> {
        // In a pod, the download Jobs run the image this container runs, unless told otherwise.
        let image_from_pod = match (&self.downloader_image, &self.identity) {
            (None, Some(pod)) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                Some((self.lease_namespace.clone(), pod.clone()))
            }
            _ => None,
        };
        let identity = self
            .identity
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("mlmodel-operator-{}", std::process::id()));
        if self.leader_elect && self.lease_renew_deadline_seconds >= self.lease_duration_seconds {
            return Err(format!(
                "--lease-renew-deadline-seconds (LEASE_RENEW_DEADLINE_SECONDS) is {} and must be less than \
                 --lease-duration-seconds (LEASE_DURATION_SECONDS), {}",
                self.lease_renew_deadline_seconds, self.lease_duration_seconds
            ));
        }
        let requests = resources::resource_list(&self.downloader_requests)
            .map_err(|e| format!("--downloader-requests (DOWNLOADER_REQUESTS): {e}"))?;
        let limits = resources::resource_list(&self.downloader_limits)
            .map_err(|e| format!("--downloader-limits (DOWNLOADER_LIMITS): {e}"))?;
        let lease = self.leader_elect.then(|| LeaseSettings {
            name: self.lease_name,
            namespace: self.lease_namespace,
            identity: identity.clone(),
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_deadline: Duration::from_secs(self.lease_renew_deadline_seconds),
            retry_period: Duration::from_secs(self.lease_retry_period_seconds),
        });
        Ok(RunSettings {
            lifecycle: Settings {
                build: BuildSettings {
                    downloader_image: self
                        .downloader_image
                        .unwrap_or_else(|| BuildSettings::default().downloader_image),
                    cluster_domain: self.cluster_domain,
                    downloader_pull_policy: self.downloader_pull_policy,
                    downloader_telemetry_env: downloader_telemetry_env(
                        |k| std::env::var(k).ok(),
                        self.downloader_otlp_endpoint.as_deref(),
                        self.downloader_otlp_protocol.as_deref(),
                    ),
                    allow_ambient_credentials: self.allow_ambient_credentials,
                    downloader_resources: ResourceRequirements {
                        requests: (!requests.is_empty()).then_some(requests),
                        limits: (!limits.is_empty()).then_some(limits),
                        ..Default::default()
                    },
                },
                unschedulable_grace: Duration::from_secs(self.unschedulable_grace_seconds),
                image_pull_grace: Duration::from_secs(self.image_pull_grace_seconds),
                crash_loop_restarts: self.crash_loop_restarts,
                force_delete_after: Duration::from_secs(self.force_delete_after_seconds),
                storage_grace: Duration::from_secs(self.storage_grace_seconds),
            },
            supervision: SupervisionSettings {
                max_restarts: self.max_actor_restarts,
                restart_window: Duration::from_secs(self.actor_restart_window_seconds),
                resync_period: Duration::from_secs(self.resync_seconds.max(1)),
                // Half the shutdown: the rest is for releasing the lease and the exporters.
                stop_timeout: Duration::from_secs(self.shutdown_timeout_seconds) / 2,
                ..Default::default()
            },
            lease,
            downloader_image_from_pod: image_from_pod,
            metrics_addr: self.metrics_addr,
            identity,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_seconds),
            api_qps: self.api_qps,
            api_burst: self.api_burst,
            scope: WatchScope::new(self.namespaces),
            initial_list: self.initial_list,
        })
    }
}

/// The operator's own OTLP export settings, handed to download Jobs so the downloader's
/// spans reach the same collector (the operator's service name is not passed on).
/// The OTLP settings the download Jobs get: the operator's own, or the downloader's endpoint
/// and protocol where they are set (an in-cluster collector address, say).
fn downloader_telemetry_env(
    operator_env: impl Fn(&str) -> Option<String>,
    endpoint: Option<&str>,
    protocol: Option<&str>,
) -> Vec<(String, String)> {
    const PASSED: [&str; 6] = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ];
    let overridden =
        |k: &str| (endpoint.is_some() && k.contains("ENDPOINT")) || (protocol.is_some() && k.contains("PROTOCOL"));
    let mut env: Vec<(String, String)> = PASSED
        .iter()
        .filter(|k| !overridden(k))
        .filter_map(|k| operator_env(k).map(|v| ((*k).to_owned(), v)))
        .collect();
    if let Some(endpoint) = endpoint {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.to_owned()));
    }
    if let Some(protocol) = protocol {
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), protocol.to_owned()));
    }
    env
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Crd = cli.command {
        return match MLModel::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: cannot render the CRD: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> ExitCode {
    let service = match cli.command {
        Command::Download(_) => "mlmodel-downloader",
        _ => "mlmodel-operator",
    };
    let guard = match telemetry::init(service, cli.log_format) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        Command::Crd => ExitCode::SUCCESS,
        Command::Download(args) => {
            let span = tracing::info_span!("mlmodel.download");
            telemetry::parent_from_env(&span);
            let result = {
                use tracing::Instrument;
                download::run(*args).instrument(span).await
            };
            match result {
                Ok(report) => {
                    tracing::info!(bytes = report.bytes, path = %report.path.display(), skipped = report.skipped, "download complete");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    tracing::error!(category = error.category(), "{error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Trace(args) => match traceview::run(&args).await {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => match args.into_settings() {
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
            Ok(settings) => match operator::run(settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error}");
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            },
        },
    };
    drop(guard);
    code
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use mlmodel_operator::operator::WatchScope;

    use super::{Cli, Command, InitialList, downloader_telemetry_env};

    fn run_settings(args: &[&str]) -> mlmodel_operator::operator::RunSettings {
        let cli = Cli::try_parse_from(["mlmodel-operator", "run"].iter().chain(args)).expect("valid flags");
        match cli.command {
            Command::Run(run) => run.into_settings().expect("valid settings"),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn the_scope_and_ambient_credentials_come_from_their_flags() {
        let defaults = run_settings(&[]);
        assert_eq!(defaults.scope, WatchScope::Cluster);
        assert!(!defaults.lifecycle.build.allow_ambient_credentials);
        let set = run_settings(&["--namespaces", "team-b,team-a", "--allow-ambient-credentials"]);
        assert_eq!(
            set.scope,
            WatchScope::Namespaces(vec!["team-a".to_owned(), "team-b".to_owned()])
        );
        assert!(set.lifecycle.build.allow_ambient_credentials);
    }

    #[test]
    fn watches_list_unless_the_flag_says_to_stream_or_to_ask() {
        assert_eq!(run_settings(&[]).initial_list, InitialList::List);
        assert_eq!(run_settings(&["--initial-list=auto"]).initial_list, InitialList::Auto);
        assert_eq!(
            run_settings(&["--initial-list", "stream"]).initial_list,
            InitialList::Stream
        );
        let error = Cli::try_parse_from(["mlmodel-operator", "run", "--initial-list=paged"])
            .expect_err("an unknown way to list is refused")
            .to_string();
        assert!(
            error.contains("--initial-list") && error.contains("list, stream, auto"),
            "{error}"
        );
    }

    fn refused(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(["mlmodel-operator", "run"].iter().chain(args)).expect("parsable flags");
        match cli.command {
            Command::Run(run) => run.into_settings().expect_err("refused settings"),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_in_one_line_naming_them() {
        let lease = refused(&[
            "--leader-elect=true",
            "--lease-duration-seconds=15",
            "--lease-renew-deadline-seconds=20",
        ]);
        assert_eq!(
            lease,
            "--lease-renew-deadline-seconds (LEASE_RENEW_DEADLINE_SECONDS) is 20 and must be less than \
             --lease-duration-seconds (LEASE_DURATION_SECONDS), 15"
        );
        let limits = refused(&["--downloader-limits=cpu=1,memory=lots"]);
        assert!(
            limits.starts_with("--downloader-limits (DOWNLOADER_LIMITS): "),
            "{limits}"
        );
        assert!(limits.contains("memory=lots") && !limits.contains('\n'), "{limits}");
    }

    #[test]
    fn download_pods_resources_come_from_their_flags() {
        let settings = run_settings(&["--downloader-requests=cpu=1", "--downloader-limits="]);
        let resources = settings.lifecycle.build.downloader_resources;
        assert_eq!(
            resources.requests.and_then(|r| r.get("cpu").map(|q| q.0.clone())),
            Some("1".to_owned())
        );
        assert_eq!(resources.limits, None);
    }

    fn operator(k: &str) -> Option<String> {
        match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://127.0.0.1:4317/traces".to_owned()),
            "OTEL_TRACES_SAMPLER" => Some("always_on".to_owned()),
            _ => None,
        }
    }

    fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn download_jobs_get_the_operators_otlp_settings_by_default() {
        let env = downloader_telemetry_env(operator, None, None);
        assert_eq!(
            pairs(&env),
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4317/traces"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
            ]
        );
    }

    #[test]
    fn the_downloaders_own_endpoint_and_protocol_replace_the_operators() {
        let env = downloader_telemetry_env(
            operator,
            Some("http://collector.observability:4318"),
            Some("http/protobuf"),
        );
        assert_eq!(
            pairs(&env),
            [
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.observability:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]
        );
    }
}
