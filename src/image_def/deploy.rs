//! `[deploy]`: what each node of a deployment is given (Kubernetes requests and limits, the
//! size of each volume, an environment such as the JVM heap), with documented defaults.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::Doc;
use crate::error::Result;

/// Defaults: what a ZooKeeper and a Kafka broker of the seed need to start and stay up.
pub(crate) const DEFAULT_CPU: &str = "1";
pub(crate) const DEFAULT_MEMORY: &str = "2Gi";
pub(crate) const DEFAULT_STORAGE: &str = "10Gi";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DeployToml {
    #[serde(default)]
    cpu: Option<Spanned<String>>,
    #[serde(default)]
    memory: Option<Spanned<String>>,
    #[serde(default)]
    storage: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
}

/// Resources and environment of every node of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// CPU requested per node (a Kubernetes quantity: `1`, `500m`).
    pub cpu: String,
    /// Memory requested and limited per node (`2Gi`): the heaps in `env` must fit in it.
    pub memory: String,
    /// The size of each volume (`10Gi`).
    pub storage: String,
    /// Set on every node by Compose and Kubernetes (not in the image: a probe exec'd in the
    /// node would inherit a heap meant for the service).
    pub env: BTreeMap<String, String>,
}

impl Default for Deploy {
    fn default() -> Deploy {
        Deploy {
            cpu: DEFAULT_CPU.into(),
            memory: DEFAULT_MEMORY.into(),
            storage: DEFAULT_STORAGE.into(),
            env: BTreeMap::new(),
        }
    }
}

pub(super) fn parse(file: &Doc, d: &DeployToml) -> Result<Deploy> {
    let quantity = |field: &str, value: &Option<Spanned<String>>, default: &str| -> Result<String> {
        let Some(v) = value else { return Ok(default.to_string()) };
        if is_quantity(v.get_ref()) {
            Ok(v.get_ref().clone())
        } else {
            Err(file.error_at(
                v.span(),
                format!(
                    "[deploy] `{field}`: `{}` is not a quantity (digits, an optional fraction, then one of m, k, M, G, T, Ki, Mi, Gi, Ti, or nothing)",
                    crate::error::escape(v.get_ref())
                ),
            ))
        }
    };
    let mut env = BTreeMap::new();
    for (k, v) in &d.env {
        if let Some(problem) = crate::entrypoint::env_name_problem(k) {
            return Err(file.error_at(v.span(), format!("[deploy.env]: {problem}")));
        }
        env.insert(k.clone(), v.get_ref().clone());
    }
    Ok(Deploy {
        cpu: quantity("cpu", &d.cpu, DEFAULT_CPU)?,
        memory: quantity("memory", &d.memory, DEFAULT_MEMORY)?,
        storage: quantity("storage", &d.storage, DEFAULT_STORAGE)?,
        env,
    })
}

/// A Kubernetes quantity as imgbuild accepts it: `N`, `N.N`, with a decimal or binary suffix,
/// not zero.
pub(crate) fn is_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 10] = ["Ki", "Mi", "Gi", "Ti", "m", "k", "M", "G", "T", ""];
    let Some(number) = SUFFIXES.iter().find_map(|s| text.strip_suffix(s)) else { return false };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction) && number.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::is_quantity;

    #[test]
    fn quantities() {
        for ok in ["1", "500m", "2Gi", "0.5", "10Gi", "512Mi", "1.5G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "0", "Gi", "-1", "1 Gi", "1gi", "1.", ".5", "1e3", "0Mi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn accepted_quantities_are_kubernetes_quantities(text in "[0-9.]{0,6}(Ki|Mi|Gi|m|k|M|G|x|)") {
            if is_quantity(&text) {
                let re = regex_lite(&text);
                prop_assert!(re, "{}", text);
            }
        }
    }

    /// Kubernetes' own grammar, restricted to what imgbuild writes: digits, optional `.digits`,
    /// then a suffix.
    fn regex_lite(text: &str) -> bool {
        let body = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let mut parts = body.splitn(2, '.');
        let whole = parts.next().unwrap_or("");
        let fraction = parts.next();
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
    }
}
