//! Every ready-made run config under `configs/` parses, checks, builds its model, names stages the
//! model has, and names pretrained weights the registry knows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::Device;
use mura_models::Model;
use mura_models::hub::Registry;
use mura_train::{Freeze, RunConfig};

#[test]
fn the_shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let registry = Registry::builtin().unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let name = path.display();
        let mut c = RunConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        c.data.root = Some("/data/mura".into());
        c.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        let (mut model, _) =
            Model::with_seed(&c.model, 0, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Freeze::Before(stage) = &c.train.freeze {
            model
                .set_trainable(&mura_models::Trainable::From(stage.clone()))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        if let Some(from) = c.train.fine_tune.as_ref().and_then(|f| f.from.clone()) {
            model
                .set_trainable(&mura_models::Trainable::From(from))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        if let Some(p) = &c.pretrained {
            let tag = p.weights.to_string_lossy();
            let e = registry.get(&tag).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(e.arch, c.model.arch.name(), "{name}");
        }
    }
    assert!(seen >= 5, "{seen} configs in {}", dir.display());
}
