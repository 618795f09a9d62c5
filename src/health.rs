//! What "serving" means for a node, from its definition: each `[[service]]` may name a
//! `health` command (exit 0: the service serves clients, not merely listens) and a `role`
//! command (prints the node's role: `leader`, `follower`, `standalone`, `controller`, …).
//! Compose health checks and Kubernetes probes run [`shell_check`]; an operator that can exec
//! in a node (`status`, `rollout`) calls [`probe`] with its own way to run a command there.

use std::process::Output;

use crate::entrypoint::sh_quote;
use crate::image_def::ImageDef;

/// One command line for `sh -c` that succeeds when every service with a `health` command
/// serves; `None` when no service defines one. Words are quoted: never read as shell by us.
pub fn shell_check(def: &ImageDef) -> Option<String> {
    let checks: Vec<String> = def
        .services
        .iter()
        .filter_map(|s| s.health.as_ref())
        .map(|words| words.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" "))
        .collect();
    (!checks.is_empty()).then(|| checks.join(" && "))
}

/// What one service of a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceHealth {
    pub service: String,
    /// `None` when the definition gives the service no `health` command.
    pub serving: Option<bool>,
    /// The first line the `role` command printed, when it is a role word.
    pub role: Option<String>,
    /// Why a check could not run (the exec itself failed), for the operator to show.
    pub error: Option<String>,
}

impl ServiceHealth {
    /// Healthy unless a health command failed or could not run.
    pub fn ok(&self) -> bool {
        self.serving != Some(false) && self.error.is_none()
    }
}

/// Runs each service's `health` and `role` command through `exec` (which runs the words inside
/// the node: `podman exec`, `kubectl exec`, ssh, …) and reads the answers.
pub fn probe(def: &ImageDef, exec: &mut dyn FnMut(&[String]) -> std::io::Result<Output>) -> Vec<ServiceHealth> {
    def.services
        .iter()
        .map(|s| {
            let mut health = ServiceHealth { service: s.name.clone(), serving: None, role: None, error: None };
            if let Some(words) = &s.health {
                match exec(words) {
                    Ok(out) => health.serving = Some(out.status.success()),
                    Err(e) => health.error = Some(format!("health of {}: {e}", s.name)),
                }
            }
            if let Some(words) = &s.role {
                match exec(words) {
                    Ok(out) if out.status.success() => health.role = role_word(&String::from_utf8_lossy(&out.stdout)),
                    Ok(_) => {}
                    Err(e) => health.error = Some(format!("role of {}: {e}", s.name)),
                }
            }
            health
        })
        .collect()
}

/// The role in a role command's output: its first non-empty line, when that is one word of
/// `a-z`, `0-9`, `_` and `-` (at most 32 characters); anything else is no role.
pub(crate) fn role_word(output: &str) -> Option<String> {
    let line = output.lines().map(str::trim).find(|l| !l.is_empty())?;
    let word = line.to_ascii_lowercase();
    let ok =
        word.len() <= 32 && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    ok.then_some(word)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use proptest::prelude::*;

    use super::*;

    fn seed() -> ImageDef {
        crate::project::Project::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), None).unwrap().image
    }

    fn output(code: i32, stdout: &str) -> Output {
        Output { status: ExitStatus::from_raw(code << 8), stdout: stdout.as_bytes().to_vec(), stderr: Vec::new() }
    }

    #[test]
    fn the_seed_defines_health_and_role_for_both_services() {
        let def = seed();
        for s in &def.services {
            assert!(s.health.is_some() && s.role.is_some(), "service {}", s.name);
        }
        let check = shell_check(&def).unwrap();
        assert!(check.contains("zkServer.sh") && check.contains(" && "), "{check}");
    }

    #[test]
    fn a_failing_health_command_is_not_serving_and_roles_are_read() {
        let def = seed();
        // ZooKeeper answers "not currently serving" (its health fails); Kafka's check passes.
        let zk_health = def.services[0].health.clone().unwrap();
        let mut exec = |words: &[String]| -> std::io::Result<Output> {
            Ok(match words {
                w if w == zk_health.as_slice() => output(1, ""),
                w if w.join(" ").contains("zkServer.sh") => output(0, "\n"),
                _ => output(0, "controller\n"),
            })
        };
        let got = probe(&def, &mut exec);
        assert_eq!(got[0].serving, Some(false));
        assert!(!got[0].ok());
        assert_eq!(got[0].role, None);
        assert_eq!(got[1].serving, Some(true));
        assert_eq!(got[1].role.as_deref(), Some("controller"));
    }

    #[test]
    fn an_exec_that_cannot_run_is_named() {
        let def = seed();
        let mut exec = |_: &[String]| -> std::io::Result<Output> { Err(std::io::Error::other("no such container")) };
        let got = probe(&def, &mut exec);
        assert!(got.iter().all(|h| !h.ok() && h.error.as_deref().unwrap().contains("no such container")));
    }

    proptest! {
        #[test]
        fn roles_are_single_words(text in "(?s).{0,80}") {
            if let Some(role) = role_word(&text) {
                prop_assert!(!role.is_empty() && role.len() <= 32);
                prop_assert!(role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'));
                prop_assert!(text.to_ascii_lowercase().contains(&role));
            }
        }

        #[test]
        fn the_shell_check_quotes_every_word(words in prop::collection::vec("[^\\x00]{0,12}", 1..5)) {
            let mut def = seed();
            def.services.truncate(1);
            def.services[0].health = Some(words.clone());
            let check = shell_check(&def).unwrap();
            let expected: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
            prop_assert_eq!(check, expected.join(" "));
        }
    }
}
