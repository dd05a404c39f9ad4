//! Settings in one place: a preset's sections (the model, stage 1's training and data, stage 2's
//! training), the presets shipped as TOML under `assets/presets/`, and `--set section.key=value`
//! overrides on top. A preset is checked as it loads, so a bad setting is refused before any work starts.

pub mod data;
pub mod train;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use data::DataConfig;
pub use train::{MicroBatchReduction, TrainConfig};

use crate::model::ModelConfig;

/// A preset: the model, stage 1's training (`train`) and data (`data`), and stage 2's training (`text`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preset {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub text: TrainConfig,
}

impl Default for Preset {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            data: DataConfig::default(),
            text: TrainConfig::text_default(),
        }
    }
}

const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../assets/presets/tiny.toml")),
    ("small", include_str!("../../assets/presets/small.toml")),
    ("paper-1.6b", include_str!("../../assets/presets/paper-1.6b.toml")),
    ("nca-tiny", include_str!("../../assets/presets/nca-tiny.toml")),
    ("nca-small", include_str!("../../assets/presets/nca-small.toml")),
];

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

impl Preset {
    /// The sections, as TOML, `--set` and a run's stored settings name them.
    pub const SECTIONS: [&'static str; 4] = ["model", "train", "data", "text"];

    /// A shipped preset by name, or a TOML file by path, with `section.key=value` overrides.
    pub fn load(name_or_path: &str, overrides: &[String]) -> Result<Self> {
        let text = match PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => t.to_string(),
            None if std::path::Path::new(name_or_path).is_file() => std::fs::read_to_string(name_or_path)
                .with_context(|| format!("cannot read preset file {name_or_path}"))?,
            None => bail!(
                "unknown preset {name_or_path:?}: use one of {} or a TOML file",
                preset_names().join(", ")
            ),
        };
        let mut value: toml::Table =
            toml::from_str(&text).with_context(|| format!("preset {name_or_path} is not valid TOML"))?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        // Keys left out of [text] take stage 2's defaults, not stage 1's.
        let mut text = match toml::Value::try_from(TrainConfig::text_default())? {
            toml::Value::Table(t) => t,
            _ => unreachable!("a struct serialises to a table"),
        };
        if let Some(user) = value.remove("text") {
            let user = user
                .as_table()
                .cloned()
                .ok_or_else(|| anyhow!("preset {name_or_path}: [text] must be a table"))?;
            text.extend(user);
        }
        value.insert("text".into(), toml::Value::Table(text));
        if let Some(data) = value.get("data").and_then(toml::Value::as_table) {
            DataConfig::check_rule_family(data).map_err(|e| anyhow!("preset {name_or_path}: {e}"))?;
        }
        let preset: Preset =
            toml::Value::Table(value).try_into().map_err(|e| anyhow!("preset {name_or_path}: {e}"))?;
        preset.train.validate()?;
        preset.text.validate().map_err(|e| anyhow!("{}", e.to_string().replace("train.", "text.")))?;
        preset.data.validate()?;
        Ok(preset)
    }

    /// The preset a run stored among its settings (beside keys of its own, which are left out).
    pub fn from_settings(settings: &serde_json::Value) -> Result<Self> {
        let sections = settings
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| Self::SECTIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::from_value(serde_json::Value::Object(sections)).context("the run's stored settings")
    }
}

/// Applies `section.key=value`; the value is read as TOML (number, boolean, string) or as a bare string.
fn apply_override(table: &mut toml::Table, text: &str) -> Result<()> {
    let Some((path, raw)) = text.split_once('=') else {
        bail!("--set expects section.key=value (e.g. model.layers=4), got {text:?}");
    };
    let parts: Vec<&str> = path.trim().split('.').collect();
    if parts.len() != 2 || !Preset::SECTIONS.contains(&parts[0]) {
        let keys: Vec<String> = Preset::SECTIONS.iter().map(|s| format!("{s}.NAME")).collect();
        let (last, others) = keys.split_last().expect("a preset has sections");
        bail!("--set {path}: the key must be {} or {last}", others.join(", "));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section = table
        .entry(parts[0].to_string())
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .ok_or_else(|| anyhow!("preset section {} is not a table", parts[0]))?;
    section.insert(parts[1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nca::complexity::Band;

    fn fails(name: &str, overrides: &[&str]) -> String {
        let overrides: Vec<String> = overrides.iter().map(|o| o.to_string()).collect();
        format!("{:#}", Preset::load(name, &overrides).unwrap_err())
    }

    #[test]
    fn presets_load_and_overrides_apply() {
        for name in preset_names() {
            let p = Preset::load(name, &[]).unwrap();
            let m = ModelConfig { vocab_size: 10_048, ..p.model };
            m.validate().unwrap();
        }
        let p = Preset::load("paper-1.6b", &[]).unwrap();
        assert_eq!(
            (p.model.layers, p.model.d_model, p.model.heads, p.model.mlp_hidden),
            (24, 2048, 32, 8192)
        );
        let p = Preset::load(
            "tiny",
            &["model.layers=3".into(), "train.lr=5e-4".into(), "data.band=0.3:0.4".into()],
        )
        .unwrap();
        assert_eq!((p.model.layers, p.train.lr, p.data.band), (3, 5e-4, Band::new(0.3, 0.4).unwrap()));
        assert!(Preset::load("tiny", &["model.layerz=3".into()]).unwrap_err().to_string().contains("layerz"));
        assert!(Preset::load("huge", &[]).is_err());
        assert!(Preset::load("tiny", &["layers=3".into()]).is_err());
    }

    #[test]
    fn sections_are_the_fields() {
        let v = toml::Value::try_from(Preset::default()).unwrap();
        let keys: Vec<&str> = v.as_table().unwrap().keys().map(String::as_str).collect();
        let mut sections = Preset::SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(keys, sections);
        assert!(fails("tiny", &["layers=3"]).contains("model.NAME, train.NAME, data.NAME or text.NAME"));
    }

    #[test]
    fn the_rule_family_is_set_in_data() {
        let p = Preset::load("nca-tiny", &[]).unwrap();
        assert_eq!(p.data.spec, crate::nca::NcaSpec { grid: 4, ..Default::default() });
        let p = Preset::load(
            "nca-tiny",
            &["data.hidden=32".into(), "data.temperature=0.5".into(), "data.channel_wrap=false".into()],
        )
        .unwrap();
        assert_eq!((p.data.spec.hidden, p.data.spec.temperature, p.data.spec.channel_wrap), (32, 0.5, false));
        assert!(fails("tiny", &["data.hiden=32"]).contains("hiden"));
        assert!(fails("tiny", &["data.hidden=wide"]).contains("data.hidden"));
        assert!(fails("tiny", &["data.channel_wrap=3"]).contains("data.channel_wrap"));
    }

    #[test]
    fn bad_data_is_refused_as_the_preset_loads() {
        for band in ["0.6:0.5", "half", "0.5:1.5"] {
            let err = fails("tiny", &[&format!("data.band={band}")]);
            assert!(err.contains("data.band") && err.contains("complexity band"), "{band}: {err}");
        }
        assert!(fails("tiny", &["data.grid=11"]).contains("data.grid must be an even number"));
        assert!(fails("tiny", &["data.hidden=0"]).contains("data.hidden"));
        assert!(fails("tiny", &["data.rules=0"]).contains("data.rules"));
    }

    #[test]
    fn stored_settings_read_back() {
        let p = Preset::load("nca-tiny", &["data.band=0.3:0.4".into()]).unwrap();
        let mut stored = serde_json::to_value(&p).unwrap();
        assert_eq!(stored["data"]["band"], "0.3:0.4");
        stored["stage"] = "pre".into();
        assert_eq!(Preset::from_settings(&stored).unwrap(), p);
        // Settings stored before the data section held the whole rule family.
        let old = serde_json::json!({"data": {"rules": 64, "val_rules": 16, "grid": 4, "states": 10,
            "band": "0.5:1.0", "redraw_rules": false}, "stage": "pre"});
        let p = Preset::from_settings(&old).unwrap();
        assert_eq!(
            (p.data.rules, p.data.spec.grid, p.data.spec.hidden, p.data.band),
            (64, 4, 16, Band::PAPER_DEFAULT)
        );
    }
}
