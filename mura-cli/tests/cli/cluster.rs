//! A real Slurm on this machine: a one-node cluster on 127.0.0.1 runs the folds of `mura cv` as
//! the job array `mura cv --emit slurm` writes, and `mura cv --collect` gathers them into the
//! same table as `mura cv` in one process. Needs root and Debian's `slurm-wlm` and `munge`
//! (`.ci/run` installs them where it can and runs this test by name).

use std::time::{Duration, Instant};

use super::*;

/// The daemons of a one-node cluster, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    daemons: Vec<std::process::Child>,
}

impl Drop for Cluster {
    /// Stops the daemons as their init scripts do (SIGTERM, so they stop their helpers), and
    /// kills any that is still there after ten seconds.
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = Command::new("kill").arg(d.id().to_string()).status();
        }
        let start = Instant::now();
        for d in &mut self.daemons {
            while matches!(d.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        let socket = self.dir.join("munge.socket");
        let _ = Command::new("munged")
            .args(["--stop", &format!("--socket={}", socket.display())])
            .status();
    }
}

fn hostname() -> String {
    let o = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// munged, slurmctld and slurmd with every file under `dir`.
fn start_cluster(dir: &Path) -> Cluster {
    for tool in ["munged", "slurmctld", "slurmd", "sbatch", "squeue"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .unwrap()
            .success();
        assert!(
            found,
            "{tool} is not installed (apt-get install slurm-wlm munge)"
        );
    }
    for sub in ["state", "spool", "log"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let key: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(dir.join("munge.key"), key).unwrap();
    Command::new("chmod")
        .args(["600", dir.join("munge.key").to_str().unwrap()])
        .status()
        .unwrap();
    let d = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let host = hostname();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let conf = format!(
        "ClusterName=mura-test\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
         AuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\n\
         ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core\nStateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
         SlurmctldPidFile={ctldpid}\nSlurmdPidFile={dpid}\nSlurmctldLogFile={ctldlog}\n\
         SlurmdLogFile={dlog}\nSlurmctldPort=16817\nSlurmdPort=16818\nReturnToService=2\n\
         MpiDefault=none\nNodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
         PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
        sock = d("munge.socket"),
        state = d("state"),
        spool = d("spool"),
        ctldpid = d("slurmctld.pid"),
        dpid = d("slurmd.pid"),
        ctldlog = d("log/slurmctld.log"),
        dlog = d("log/slurmd.log"),
    );
    fs::write(dir.join("slurm.conf"), conf).unwrap();
    let munged = Command::new("munged")
        .args([
            "--force",
            &format!("--key-file={}", d("munge.key")),
            &format!("--socket={}", d("munge.socket")),
            &format!("--pid-file={}", d("munged.pid")),
            &format!("--log-file={}", d("log/munged.log")),
            &format!("--seed-file={}", d("munged.seed")),
        ])
        .status()
        .unwrap();
    assert!(munged.success(), "munged did not start");
    let mut cluster = Cluster {
        dir: dir.to_path_buf(),
        daemons: vec![],
    };
    let conf = d("slurm.conf");
    cluster.daemons.push(
        Command::new("slurmctld")
            .args(["-D", "-f", &conf])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    cluster.daemons.push(
        Command::new("slurmd")
            .args(["-D", "-f", &conf, "-N", &host])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        let o = Command::new("sinfo")
            .args(["-h", "-o", "%T"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).trim() == "idle" {
            return cluster;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the node never became idle"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The one cross-validation folder under `out`.
fn cv_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
#[ignore = "needs root and Slurm (slurm-wlm, munge); .ci/run installs them and runs it where it can"]
fn cv_folds_run_as_a_slurm_job_array_equal_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_cv_config(dir.path());
    let cfg = config.to_str().unwrap();
    let one = dir.path().join("one");
    let o = cv_in(cfg, &one, &["--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let cluster = start_cluster(&dir.path().join("slurm"));
    let conf = cluster.dir.join("slurm.conf");
    let array = dir.path().join("array");
    let o = cv_in(cfg, &array, &["--emit", "slurm"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let script = dir.path().join("cv.sbatch");
    fs::write(&script, stdout(&o)).unwrap();
    let o = Command::new("sbatch")
        .args(["--parsable", script.to_str().unwrap()])
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "sbatch: {}", stderr(&o));
    let job = stdout(&o).trim().to_string();
    let start = Instant::now();
    loop {
        let o = Command::new("squeue")
            .args(["-h", "-j", &job])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        if stdout(&o).trim().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the array never ended"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(cluster);
    let o = cv_in(cfg, &array, &["--collect", "--quiet"]);
    let logs: Vec<String> = fs::read_dir(cv_dir(&array))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(o.status.success(), "{}\n{}", stderr(&o), logs.join("\n"));
    let table = |out: &Path| fs::read_to_string(cv_dir(out).join("cv.csv")).unwrap();
    assert_eq!(table(&array), table(&one));
    assert_eq!(logs.len(), 3, "one log per task");
}

/// `mura cv` with a tiny config under `dir`; returns the config's path.
fn tiny_cv_config(dir: &Path) -> PathBuf {
    let root = synth(dir, 30);
    let config = dir.join("cv.toml");
    fs::write(
        &config,
        format!(
            "seed = 9\n[data]\nroot = {:?}\nthreads = 1\n[model]\narch = \"alexnet-style\"\ninput_size = 24\n[train]\nepochs = 1\nbatch_size = 8\n",
            root.to_str().unwrap()
        ),
    )
    .unwrap();
    config
}

/// `mura cv --config CFG --folds 3 --out OUT EXTRA...`.
fn cv_in(cfg: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--config",
        cfg,
        "--folds",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    cv_task(&args, &[])
}

fn cv_task(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mura"))
        .arg("cv")
        .args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn folds_run_one_by_one_as_array_tasks_collect_into_the_one_process_table() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_cv_config(dir.path());
    let cfg = config.to_str().unwrap();
    let one = dir.path().join("one");
    let o = cv_task(
        &[
            "--config",
            cfg,
            "--folds",
            "3",
            "--out",
            one.to_str().unwrap(),
            "--quiet",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let array = dir.path().join("array");
    let base = [
        "--config",
        cfg,
        "--folds",
        "3",
        "--out",
        array.to_str().unwrap(),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cv_task(&args, env)
    };
    // Fold 2 by its number; nothing else yet: collect names the rest.
    let o = run(&["--fold", "2", "--quiet"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--collect", "--quiet"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("1 of 3 folds collected; missing (never started): [1, 3]"),
        "{}",
        stderr(&o)
    );
    // A started fold that left no result is unfinished.
    let fold3 = cv_dir(&array).join("fold-3");
    fs::create_dir_all(&fold3).unwrap();
    let o = run(&["--collect", "--quiet"], &[]);
    assert!(
        stderr(&o).contains(
            "missing (never started): [1]; unfinished (running, failed or cancelled): [3]"
        ),
        "{}",
        stderr(&o)
    );
    fs::remove_dir(&fold3).unwrap();
    // The others as array tasks: Slurm's index, then Kubernetes'.
    let o = run(&["--fold", "--quiet"], &[("SLURM_ARRAY_TASK_ID", "0")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--fold", "--json"], &[("JOB_COMPLETION_INDEX", "2")]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Epoch lines, then the fold's result.
    let last = stdout(&o).lines().last().unwrap_or_default().to_string();
    let fold: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(fold["fold"], 3);
    let o = run(&["--collect", "--quiet"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = |out: &Path| fs::read_to_string(cv_dir(out).join("cv.csv")).unwrap();
    assert_eq!(table(&array), table(&one));

    // Bad indices are refused clearly.
    let o = run(&["--fold", "4"], &[]);
    assert!(
        stderr(&o).contains("fold 4 does not exist: the folds are 1 to 3"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--fold"], &[]);
    assert!(
        stderr(&o).contains("no task index: give --fold I"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--fold"], &[("SLURM_ARRAY_TASK_ID", "first")]);
    assert!(
        stderr(&o).contains("SLURM_ARRAY_TASK_ID=\"first\" is not a task index"),
        "{}",
        stderr(&o)
    );
    // A job array for each scheduler.
    let o = run(&["--emit", "slurm"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).lines().any(|l| l == "#SBATCH --array=0-2"),
        "{}",
        stdout(&o)
    );
    let o = run(&["--emit", "k8s", "--image", "reg/mura:1"], &[]);
    assert!(
        stdout(&o).contains("completionMode: Indexed"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_sweep_runs_one_point_per_task_and_ranks_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_cv_config(dir.path());
    let sweep = dir.path().join("sweep.toml");
    fs::write(
        &sweep,
        "base = \"cv.toml\"\nout = \"sweep-runs\"\nmetric = \"study_kappa\"\n[grid]\n\"train.batch_size\" = [4, 8]\n",
    )
    .unwrap();
    assert!(config.is_file());
    let s = sweep.to_str().unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_mura"))
            .args(["sweep", s])
            .args(extra)
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let o = run(&["--list"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    assert!(
        listed.contains("00-batch_size=4") && listed.contains("train.batch_size = 8"),
        "{listed}"
    );
    let o = run(&["--index", "0", "--quiet"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--collect"], &[]);
    assert!(
        stderr(&o).contains("1 of 2 points ranked; missing (never started): [1]"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--index", "--quiet"], &[("SLURM_ARRAY_TASK_ID", "1")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--collect"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("2 points ranked by validation study_kappa"),
        "{}",
        stdout(&o)
    );
    let csv = fs::read_to_string(dir.path().join("sweep-runs").join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let o = run(&["--index", "2"], &[]);
    assert!(
        stderr(&o).contains("point 2 does not exist: the points are 0 to 1"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--emit", "slurm"], &[]);
    assert!(
        stdout(&o).lines().any(|l| l == "#SBATCH --array=0-1"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("sweep.toml --index --quiet"),
        "{}",
        stdout(&o)
    );
}
