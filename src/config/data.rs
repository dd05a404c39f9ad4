//! Stage 1's data (`[data]` of a preset): the NCA rule family, the complexity band its rules must pass,
//! and how many rules training draws. `ncalm generate`, `render` and `fit-rule` take the same settings
//! as flags that override these defaults.

use anyhow::{anyhow, ensure, Result};
use serde::{Deserialize, Serialize};

use crate::nca::complexity::Band;
use crate::nca::NcaSpec;

/// Where stage-1 NCA data comes from when generated on the fly. The defaults are the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training rules, each inside the band.
    pub rules: u64,
    /// Held-out validation rules.
    pub val_rules: u64,
    /// The rule family and its simulation; its keys (`grid`, `states`, `hidden`, ...) sit directly in
    /// `[data]`.
    #[serde(flatten)]
    pub spec: NcaSpec,
    /// Keep rules whose gzip ratio lies strictly inside this band, written "LO:HI".
    pub band: Band,
    /// Draw new training rules every epoch (the paper's README) instead of reusing them (its code).
    pub redraw_rules: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            rules: 16_000,
            val_rules: 2_000,
            spec: NcaSpec::default(),
            band: Band::PAPER_DEFAULT,
            redraw_rules: false,
        }
    }
}

impl DataConfig {
    /// Checks every setting, naming it by its key (`data.grid`, ...). The band is checked as it is read.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate().map_err(|e| anyhow!("data.{e}"))?;
        ensure!(self.rules > 0 && self.val_rules > 0, "data.rules and data.val_rules must be at least 1");
        Ok(())
    }

    /// Reads the rule family's keys of a `[data]` table on their own, so that a value of the wrong type
    /// is refused with its key's name (`data.grid`), which serde's errors lose for flattened keys.
    pub(super) fn check_rule_family(data: &toml::Table) -> Result<()> {
        let keys = toml::Table::try_from(NcaSpec::default())?;
        let family = data.iter().filter(|(k, _)| keys.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone()));
        let section = toml::Table::from_iter([("data".to_string(), toml::Value::Table(family.collect()))]);
        toml::Value::Table(section).try_into::<std::collections::BTreeMap<String, NcaSpec>>()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_family_keys_sit_in_the_section() {
        let d: DataConfig =
            toml::from_str("grid = 8\nhidden = 32\nchannel_wrap = false\nband = \"0.3:0.6\"").unwrap();
        let spec = NcaSpec { grid: 8, hidden: 32, channel_wrap: false, ..NcaSpec::default() };
        assert_eq!(d, DataConfig { spec, band: Band::new(0.3, 0.6).unwrap(), ..DataConfig::default() });
        let err = toml::from_str::<DataConfig>("hiden = 32").unwrap_err().to_string();
        assert!(err.contains("hiden"), "{err}");
    }

    #[test]
    fn the_band_is_written_as_before() {
        let v = toml::Value::try_from(DataConfig::default()).unwrap();
        assert_eq!(v["band"].as_str(), Some("0.5:1.0"));
        let json = serde_json::to_value(DataConfig::default()).unwrap();
        assert_eq!(json["band"], "0.5:1.0");
        assert_eq!(serde_json::from_value::<DataConfig>(json).unwrap(), DataConfig::default());
    }

    #[test]
    fn settings_are_named_by_their_keys() {
        let bad = |d: DataConfig| d.validate().unwrap_err().to_string();
        assert!(bad(DataConfig { spec: NcaSpec { grid: 11, ..NcaSpec::default() }, ..Default::default() })
            .starts_with("data.grid"));
        assert!(bad(DataConfig { spec: NcaSpec { hidden: 0, ..NcaSpec::default() }, ..Default::default() })
            .starts_with("data.hidden"));
        assert!(bad(DataConfig { rules: 0, ..Default::default() }).contains("data.rules"));
    }
}
