//! What walking a registry's indexes and referrers may cost one command (`pull`, `sbom`,
//! `verify`, a build's base image): a registry decides how many children an index lists and
//! how many referrers a subject has, so without a bound a hostile one makes a command fetch
//! without end (200 duplicate children and 200 referrers once took 40,606 requests). Walks
//! fetch each digest once (the store holds what was fetched); this counts what is left.

use std::cell::Cell;

/// The most documents (manifests, indexes, referrer lists, attached documents) one command
/// fetches from one registry. An image of ten platforms with three documents each needs ~60.
pub(crate) const MAX_DOCUMENTS: u64 = 512;
/// The most bytes of those documents together.
pub(crate) const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// The most layer blobs one command fetches from one registry (`pull`, `verify`, `diff`, a
/// build's base): twice what one manifest may list ([`crate::oci_doc::MAX_LAYERS`]).
pub(crate) const MAX_LAYER_FETCHES: u64 = 2 * crate::oci_doc::MAX_LAYERS as u64;

/// The documents and bytes a command's walk has fetched from one registry so far.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    documents: Cell<u64>,
    bytes: Cell<u64>,
    layers: Cell<u64>,
}

impl Budget {
    /// Counts one more document, before it is requested; past the limit, why not.
    pub(crate) fn document(&self) -> Result<(), String> {
        let n = self.documents.get();
        if n >= MAX_DOCUMENTS {
            return Err(format!(
                "this command has fetched {n} documents (manifests, indexes, referrer lists) from the registry, \
                 imgbuild's limit per command (MAX_DOCUMENTS {MAX_DOCUMENTS}): its indexes or referrers list too many"
            ));
        }
        self.documents.set(n + 1);
        Ok(())
    }

    /// Counts one more layer blob, before it is requested; past the limit, why not.
    pub(crate) fn layer(&self) -> Result<(), String> {
        let n = self.layers.get();
        if n >= MAX_LAYER_FETCHES {
            return Err(format!(
                "this command has fetched {n} layers from the registry, imgbuild's limit per command \
                 (MAX_LAYER_FETCHES {MAX_LAYER_FETCHES})"
            ));
        }
        self.layers.set(n + 1);
        Ok(())
    }

    /// Counts `n` bytes of documents; past the limit, why not.
    pub(crate) fn bytes(&self, n: u64) -> Result<(), String> {
        let total = self.bytes.get().saturating_add(n);
        if total > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "the registry's documents for this command pass {} MiB (MAX_DOCUMENT_BYTES), imgbuild's limit \
                 per command",
                MAX_DOCUMENT_BYTES >> 20
            ));
        }
        self.bytes.set(total);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layer_fetches_stop_at_their_limit_naming_it() {
        let budget = Budget::default();
        for _ in 0..MAX_LAYER_FETCHES {
            budget.layer().unwrap();
        }
        let why = budget.layer().unwrap_err();
        assert!(why.contains("MAX_LAYER_FETCHES 2000"), "{why}");
    }

    proptest! {
        /// Whatever a registry serves, a walk stops at the limits, and within them is never
        /// refused.
        #[test]
        fn a_walk_is_refused_exactly_past_its_limits(sizes in prop::collection::vec(0u64..(1 << 20), 0..700)) {
            let budget = Budget::default();
            let (mut fetched, mut bytes) = (0u64, 0u64);
            for size in sizes {
                let within = fetched < MAX_DOCUMENTS && bytes + size <= MAX_DOCUMENT_BYTES;
                let charged = budget.document().and_then(|()| budget.bytes(size));
                prop_assert_eq!(charged.is_ok(), within);
                if !within {
                    let why = charged.unwrap_err();
                    prop_assert!(why.contains("MAX_DOCUMENT"), "{}", why);
                    break;
                }
                fetched += 1;
                bytes += size;
            }
        }
    }
}
