//! OCI platforms (`linux/amd64`, `linux/arm64/v8`).

use std::fmt;
use std::str::FromStr;

const KNOWN_ARCHITECTURES: &[&str] = &["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine imgbuild runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: None }
    }

    /// Parses a comma-separated list, as `--platform` takes.
    pub fn parse_list(text: &str) -> Result<Vec<Platform>, String> {
        let mut list: Vec<Platform> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p: Platform = part.parse()?;
            if !list.contains(&p) {
                list.push(p);
            }
        }
        if list.is_empty() {
            return Err("no platform given".into());
        }
        Ok(list)
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, architecture, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(variant.to_string())),
            _ => return Err(format!("platform `{s}` is not OS/ARCH[/VARIANT], for example linux/amd64")),
        };
        if os != "linux" {
            return Err(format!("platform `{s}`: only linux images are supported"));
        }
        if !KNOWN_ARCHITECTURES.contains(&architecture) {
            return Err(format!(
                "platform `{s}`: unknown architecture `{architecture}` (known: {})",
                KNOWN_ARCHITECTURES.join(", ")
            ));
        }
        // arm64's only variant is v8; normalize it away so `linux/arm64/v8` equals `linux/arm64`.
        let variant = variant.filter(|v| !(architecture == "arm64" && v == "v8"));
        Ok(Platform { os: os.into(), architecture: architecture.into(), variant })
    }
}

impl serde::Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}
