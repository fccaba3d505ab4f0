#![allow(clippy::unwrap_used)]
use super::*;

const BASE: &str = "seed = 1\n[data]\nroot = \"/data/mura\"\n[model]\narch = \"custom-cnn\"\n[train]\nepochs = 2\n";

fn sweep(dir: &Path, text: &str) -> Result<Sweep, TrainError> {
    std::fs::write(dir.join("base.toml"), BASE).unwrap();
    let path = dir.join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    Sweep::load(&path)
}

#[test]
fn a_grid_expands_in_key_order_then_the_listed_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = sweep(
        dir.path(),
        "base = \"base.toml\"\nout = \"runs\"\n[grid]\n\"train.epochs\" = [1, 3]\n\"model.arch\" = [\"densenet121\", \"resnet50\"]\n[[runs]]\n\"seed\" = 7\n",
    )
    .unwrap();
    let names: Vec<&str> = s.points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "00-arch=densenet121_epochs=1",
            "01-arch=densenet121_epochs=3",
            "02-arch=resnet50_epochs=1",
            "03-arch=resnet50_epochs=3",
            "04-seed=7",
        ]
    );
    let p = &s.points[3];
    assert_eq!(p.config.model.arch.to_string(), "resnet50");
    assert_eq!(p.config.train.epochs, 3);
    assert_eq!(p.config.run_name(), "03-arch=resnet50_epochs=3");
    assert_eq!(s.points[4].config.seed, 7);
    assert_eq!(s.points[4].config.train.epochs, 2);
    assert_eq!(s.out, dir.path().join("runs"));
    assert_eq!(s.metric, "study_auc");
}

#[test]
fn bad_sweeps_are_refused_naming_the_point() {
    let dir = tempfile::tempdir().unwrap();
    let head = "base = \"base.toml\"\nout = \"runs\"\n";
    for (body, want) in [
        (
            "[grid]\n\"model.arch\" = [\"lenet\"]\n",
            "point 0 (00-arch=lenet)",
        ),
        (
            "[grid]\n\"train.epochs\" = []\n",
            "grid.\"train.epochs\" must be a non-empty list",
        ),
        ("", "no point: give a [grid] or [[runs]]"),
        (
            "metric = \"speed\"\n[grid]\nseed = [1]\n",
            "unknown metric `speed`",
        ),
        (
            "[grid]\n\"seed.x\" = [1]\n",
            "`seed.x`: `seed` is a value, not a table",
        ),
    ] {
        let err = sweep(dir.path(), &format!("{head}{body}")).unwrap_err();
        assert!(err.to_string().contains(want), "{body}: {err}");
    }
    let s = sweep(dir.path(), &format!("{head}[grid]\nseed = [1, 2]\n")).unwrap();
    let err = s.point(2).unwrap_err();
    assert!(
        err.to_string()
            .contains("point 2 does not exist: the points are 0 to 1"),
        "{err}"
    );
}

#[test]
fn collect_ranks_the_finished_points_and_names_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = sweep(
        dir.path(),
        "base = \"base.toml\"\nout = \"runs\"\nmetric = \"study_kappa\"\n[grid]\nseed = [1, 2, 3, 4]\n",
    )
    .unwrap();
    for (i, kappa) in [(0, 0.4), (2, 0.6)] {
        let run = s.out.join(&s.points[i].name);
        std::fs::create_dir_all(&run).unwrap();
        let r = PointResult {
            index: i,
            name: s.points[i].name.clone(),
            run: run.clone(),
            overrides: s.points[i].overrides.clone(),
            metrics: BTreeMap::from([("study_kappa".to_string(), kappa)]),
        };
        write_json(&run.join(POINT_RESULT), &r).unwrap();
    }
    std::fs::create_dir_all(s.out.join(&s.points[1].name)).unwrap();
    let r = s.collect().unwrap();
    let order: Vec<usize> = r.ranked.iter().map(|p| p.index).collect();
    assert_eq!(order, [2, 0]);
    assert_eq!(r.unfinished, [1]);
    assert_eq!(r.missing, [3]);
    let csv = std::fs::read_to_string(s.out.join("sweep.csv")).unwrap();
    assert!(
        csv.lines().nth(1).unwrap().starts_with("1,2,02-seed=3,"),
        "{csv}"
    );
}
