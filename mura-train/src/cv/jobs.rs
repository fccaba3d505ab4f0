//! Cross-validation folds as a job array of a cluster's scheduler: each task finds its index in
//! the scheduler's environment (Slurm's `SLURM_ARRAY_TASK_ID`, a Kubernetes Indexed Job's
//! `JOB_COMPLETION_INDEX`), runs that one fold, and a last step collects them. Run directories
//! lock and resume, so a requeued task continues its fold.

use std::path::{Path, PathBuf};

use crate::TrainError;
use crate::config::RunConfig;

/// The environment variables an array task's index is read from, in this order.
pub const TASK_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// This array task's 0-based index, from the first of [`TASK_VARS`] that is set (`var` looks a
/// variable up: `|k| std::env::var(k).ok()`).
pub fn array_task(var: impl Fn(&str) -> Option<String>) -> Result<usize, TrainError> {
    for key in TASK_VARS {
        if let Some(v) = var(key) {
            return v.trim().parse().map_err(|_| TrainError::Config {
                path: PathBuf::new(),
                reason: format!("{key}={v:?} is not a task index"),
            });
        }
    }
    Err(TrainError::Config {
        path: PathBuf::new(),
        reason: format!(
            "no task index: give --fold I, or run as an array task ({} set)",
            TASK_VARS.join(" or ")
        ),
    })
}

/// The schedulers a job array can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// An `sbatch` script with `--array`.
    Slurm,
    /// A Kubernetes Indexed Job manifest.
    K8s,
}

/// A job array: `tasks` copies of `command` (which reads its index from the environment), then
/// `collect` once they have all ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayJob {
    pub name: String,
    /// What each task does, for the script's first comment ("one fold each (...)").
    pub task: String,
    pub tasks: usize,
    pub command: Vec<String>,
    pub collect: Vec<String>,
    /// CPU cores per task.
    pub cpus: usize,
    /// GPUs per task.
    pub gpus: usize,
    /// Where Slurm writes each task's log.
    pub logs: PathBuf,
}

/// The job array of `folds` folds of the config at `config_path`, run by the `mura` at `program`,
/// writing under `out`.
pub fn array_job(
    program: &Path,
    config_path: &Path,
    config: &RunConfig,
    folds: usize,
    out: &Path,
) -> ArrayJob {
    let abs = |p: &Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let base = vec![
        abs(program),
        "cv".into(),
        "--config".into(),
        abs(config_path),
        "--folds".into(),
        folds.to_string(),
        "--out".into(),
        abs(out),
    ];
    let mut command = base.clone();
    command.extend(["--fold".into(), "--quiet".into()]);
    let mut collect = base;
    collect.push("--collect".into());
    let gpus = usize::from(config.device.starts_with("cuda"));
    ArrayJob {
        name: format!("mura-cv-{}", config.run_name()),
        task: "one fold each (task i trains fold-(i+1))".into(),
        tasks: folds,
        command,
        collect,
        cpus: config.data.threads.max(1),
        gpus,
        logs: super::cv_dir(config, folds, Path::new(&abs(out))),
    }
}

/// The job array of [`array_job`] written for `scheduler` ([`emit`]), after creating the folder
/// its logs go to (Slurm opens a task's log before the task runs).
pub fn emit_array(
    scheduler: Scheduler,
    program: &Path,
    config_path: &Path,
    config: &RunConfig,
    folds: usize,
    out: &Path,
    image: &str,
) -> Result<String, TrainError> {
    config.check()?;
    let job = array_job(program, config_path, config, folds, out);
    std::fs::create_dir_all(&job.logs).map_err(|e| TrainError::Unwritable {
        path: job.logs.clone(),
        reason: e.to_string(),
    })?;
    Ok(emit(scheduler, &job, image))
}

/// `s` quoted for a POSIX shell when it needs to be.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn shell(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The job array written for `scheduler`: a script to give to `sbatch`, or a manifest to give to
/// `kubectl apply -f` (with `image` the container that holds `mura`).
pub fn emit(scheduler: Scheduler, job: &ArrayJob, image: &str) -> String {
    match scheduler {
        Scheduler::Slurm => slurm(job),
        Scheduler::K8s => k8s(job, image),
    }
}

fn slurm(job: &ArrayJob) -> String {
    let gres = match job.gpus {
        0 => String::new(),
        n => format!("#SBATCH --gres=gpu:{n}\n"),
    };
    format!(
        "#!/bin/bash\n\
         # {tasks} tasks, {task}; submit with: sbatch THIS_FILE\n\
         #SBATCH --job-name={name}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --cpus-per-task={cpus}\n\
         {gres}\
         #SBATCH --requeue\n\
         #SBATCH --output={logs}/slurm-%A_%a.out\n\
         set -euo pipefail\n\
         mkdir -p {logs}\n\
         # Each task reads its index from SLURM_ARRAY_TASK_ID; a requeued task resumes its run\n\
         # from its checkpoint.\n\
         {command}\n\
         # When every task has ended, gather the results (it names any missing or unfinished):\n\
         #   sbatch --dependency=afterany:$SLURM_ARRAY_JOB_ID --wrap {collect}\n",
        tasks = job.tasks,
        task = job.task,
        name = job.name,
        last = job.tasks.saturating_sub(1),
        cpus = job.cpus,
        logs = shell_quote(&job.logs.display().to_string()),
        command = shell(&job.command),
        collect = shell_quote(&shell(&job.collect)),
    )
}

fn yaml_list(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| serde_json::to_string(a).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn k8s(job: &ArrayJob, image: &str) -> String {
    // Inside the container, `mura` is the image's own.
    let in_image = |args: &[String]| -> Vec<String> {
        std::iter::once("mura".to_string())
            .chain(args.iter().skip(1).cloned())
            .collect()
    };
    let gpu = match job.gpus {
        0 => String::new(),
        n => format!("\n              nvidia.com/gpu: {n}"),
    };
    format!(
        "# {tasks} tasks, {task}, the index from JOB_COMPLETION_INDEX; the paths below must\n\
         # be on storage every pod mounts. Apply with: kubectl apply -f THIS_FILE\n\
         # Then gather the results: {collect}\n\
         apiVersion: batch/v1\n\
         kind: Job\n\
         metadata:\n\
         \x20 name: {name}\n\
         spec:\n\
         \x20 completionMode: Indexed\n\
         \x20 completions: {tasks}\n\
         \x20 parallelism: {tasks}\n\
         \x20 backoffLimit: {retries}\n\
         \x20 template:\n\
         \x20   spec:\n\
         \x20     restartPolicy: OnFailure\n\
         \x20     containers:\n\
         \x20       - name: mura\n\
         \x20         image: {image}\n\
         \x20         command: {command}\n\
         \x20         resources:\n\
         \x20           limits:\n\
         \x20             cpu: \"{cpus}\"{gpu}\n",
        tasks = job.tasks,
        task = job.task,
        name = job.name.to_lowercase().replace(['_', '.'], "-"),
        retries = 2 * job.tasks,
        image = serde_json::to_string(image).unwrap_or_default(),
        command = yaml_list(&in_image(&job.command)),
        cpus = job.cpus,
        collect = shell(&in_image(&job.collect)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_task_index_comes_from_slurm_then_kubernetes() {
        assert_eq!(array_task(env(&[("SLURM_ARRAY_TASK_ID", "2")])).unwrap(), 2);
        assert_eq!(
            array_task(env(&[("JOB_COMPLETION_INDEX", "4")])).unwrap(),
            4
        );
        let both = [("JOB_COMPLETION_INDEX", "4"), ("SLURM_ARRAY_TASK_ID", "1")];
        assert_eq!(array_task(env(&both)).unwrap(), 1);
        let err = array_task(env(&[("SLURM_ARRAY_TASK_ID", "x")])).unwrap_err();
        assert!(
            err.to_string().contains("SLURM_ARRAY_TASK_ID=\"x\""),
            "{err}"
        );
        let err = array_task(env(&[])).unwrap_err();
        assert!(err.to_string().contains("--fold I"), "{err}");
    }

    fn job() -> ArrayJob {
        ArrayJob {
            name: "mura-cv-dn121".into(),
            task: "one fold each".into(),
            tasks: 3,
            command: vec![
                "/opt/mura".into(),
                "cv".into(),
                "--out".into(),
                "/w/my runs".into(),
                "--fold".into(),
            ],
            collect: vec!["/opt/mura".into(), "cv".into(), "--collect".into()],
            cpus: 4,
            gpus: 1,
            logs: PathBuf::from("/w/runs/dn121-cv3"),
        }
    }

    #[test]
    fn a_slurm_array_has_one_task_per_fold_and_quotes_its_paths() {
        let s = emit(Scheduler::Slurm, &job(), "");
        assert!(s.starts_with("#!/bin/bash\n"), "{s}");
        for line in [
            "#SBATCH --array=0-2",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --requeue",
            "/opt/mura cv --out '/w/my runs' --fold",
        ] {
            assert!(s.lines().any(|l| l == line), "{line}\n{s}");
        }
    }

    #[test]
    fn a_kubernetes_indexed_job_has_one_completion_per_fold() {
        let s = emit(Scheduler::K8s, &job(), "registry/mura:1");
        for line in [
            "  completionMode: Indexed",
            "  completions: 3",
            "          image: \"registry/mura:1\"",
            "          command: [\"mura\", \"cv\", \"--out\", \"/w/my runs\", \"--fold\"]",
            "              nvidia.com/gpu: 1",
        ] {
            assert!(s.lines().any(|l| l == line), "{line}\n{s}");
        }
    }
}
