//! The SPDX 2.3 JSON document of one platform's image. Its `created` time is
//! `SOURCE_DATE_EPOCH` and its namespace is derived from the image digest and the epoch, so the
//! same image always has the same SBOM bytes.

use serde_json::{json, Value};

use super::inventory::{Inventory, RecipePackage};
use crate::date::rfc3339;
use crate::digest::{Algorithm, Hash};

const IMAGE_ID: &str = "SPDXRef-Image";
const BASE_ID: &str = "SPDXRef-Base";

/// The packages of a document and how they relate.
#[derive(Default)]
struct Packages {
    packages: Vec<Value>,
    relationships: Vec<Value>,
    /// Declared licenses that are not SPDX expressions, as text.
    extracted: Vec<Value>,
}

impl Packages {
    /// Adds `package`, which `from` relates to as `kind` (`CONTAINS`, `DESCRIBES`).
    fn add(&mut self, from: &str, kind: &str, package: Value) {
        let id = package["SPDXID"].as_str().expect("every package has an id").to_string();
        self.relationships.push(json!({ "spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": id }));
        self.packages.push(package);
    }
}

/// The document, serialized canonically.
pub(crate) fn document(inv: &Inventory) -> Vec<u8> {
    let i = &inv.image;
    let mut all = Packages::default();
    let mut image = package(IMAGE_ID, &i.name, &i.tag, &inv.image_purl());
    image["primaryPackagePurpose"] = json!("CONTAINER");
    image["checksums"] = json!([checksum(&i.digest.to_hash())]);
    all.add("SPDXRef-DOCUMENT", "DESCRIBES", image);
    for (n, r) in inv.recipes.iter().enumerate() {
        let recipe = recipe_package(n, r, &mut all.extracted);
        all.add(IMAGE_ID, "CONTAINS", recipe);
    }
    if let Some(base) = &inv.base {
        let mut p = package(BASE_ID, &base.name, &base.version, &base.purl());
        p["primaryPackagePurpose"] = json!("CONTAINER");
        p["checksums"] = json!([checksum(&base.digest.to_hash())]);
        all.add(IMAGE_ID, "CONTAINS", p);
        for (n, deb) in base.debs.iter().enumerate() {
            let id = format!("SPDXRef-Deb-{n}-{}", id_part(&deb.name));
            all.add(BASE_ID, "CONTAINS", package(&id, &deb.name, &deb.version, &base.deb_purl(deb)));
        }
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}:{} {}", i.name, i.tag, i.platform),
        // A name, not a location: `.invalid` never resolves.
        "documentNamespace": format!("https://imgbuild.invalid/spdx/{}/{}/{}-{}", i.name, i.tag, i.digest.hex(), i.epoch),
        "creationInfo": {
            "created": rfc3339(i.epoch),
            "creators": [format!("Tool: imgbuild-{}", env!("CARGO_PKG_VERSION"))],
        },
        "documentDescribes": [IMAGE_ID],
        "packages": all.packages,
        "relationships": all.relationships,
    });
    if !all.extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(all.extracted);
    }
    crate::image::canonical_json(&doc)
}

/// A package with what every package here shares: its purl, no files analyzed, nothing
/// concluded or asserted that imgbuild does not know.
fn package(id: &str, name: &str, version: &str, purl: &str) -> Value {
    json!({
        "SPDXID": id,
        "name": name,
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "externalRefs": [{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl }],
    })
}

/// The `n`th recipe: its file, pinned hash, URL and declared license (a license that is not an
/// SPDX expression goes to `extracted`, as text).
fn recipe_package(n: usize, r: &RecipePackage, extracted: &mut Vec<Value>) -> Value {
    let mut p = package(&format!("SPDXRef-Recipe-{n}-{}", id_part(&r.name)), &r.name, &r.version, &r.purl());
    p["packageFileName"] = json!(r.file_name);
    p["checksums"] = json!([checksum(&r.hash)]);
    if let Some(url) = &r.url {
        if is_spdx_url(url) {
            p["downloadLocation"] = json!(url);
        }
        // Kept whole where SPDX's URL grammar has no place for it (an address, a port).
        p["sourceInfo"] = json!(format!("downloaded from {url}"));
    }
    if let Some(home) = r.homepage.as_deref().filter(|h| is_spdx_url(h)) {
        p["homepage"] = json!(home);
    }
    match r.license.as_deref() {
        None => {}
        Some(l) if is_license_expression(l) => p["licenseDeclared"] = json!(l),
        Some(l) => {
            let id = format!("LicenseRef-{}", id_part(&r.name));
            extracted.push(json!({ "licenseId": id, "extractedText": l }));
            p["licenseDeclared"] = json!(id);
        }
    }
    p
}

fn checksum(hash: &Hash) -> Value {
    let algorithm = match hash.algorithm() {
        Algorithm::Sha256 => "SHA256",
        Algorithm::Sha512 => "SHA512",
    };
    json!({ "algorithm": algorithm, "checksumValue": hash.hex() })
}

/// A name reduced to what SPDX identifiers may hold (`[A-Za-z0-9.-]`).
fn id_part(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

/// Whether `text` is a URL as SPDX 2.3's download location grammar has it: `http(s)://` or
/// `ftp://`, a host name whose last label is 2 to 5 letters, an optional port, a path.
fn is_spdx_url(text: &str) -> bool {
    let Some(rest) = ["https://", "http://", "ftp://"].iter().find_map(|s| text.strip_prefix(s)) else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return false,
        None => authority,
    };
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let tld = labels.last().copied().unwrap_or_default();
    labels.len() >= 2
        && labels.iter().all(label_ok)
        && (2..=5).contains(&tld.len())
        && tld.bytes().all(|b| b.is_ascii_alphabetic())
        && !text.contains(char::is_whitespace)
}

/// Whether `text` is an SPDX license expression (`A`, `A OR B`, `A WITH E`, `(A AND B)`) whose
/// ids are on SPDX's license list (or `LicenseRef-`): declared licenses that are not are carried
/// as `LicenseRef-` text instead, so the document stays valid.
pub(crate) fn is_license_expression(text: &str) -> bool {
    spdx::Expression::parse_mode(text, spdx::ParseMode::STRICT).is_ok()
}

#[cfg(test)]
mod tests {
    use super::{is_license_expression, is_spdx_url};

    #[test]
    fn download_locations_follow_spdx_grammar() {
        assert!(is_spdx_url("https://archive.apache.org/dist/zookeeper/zookeeper-3.4.10.tar.gz"));
        assert!(is_spdx_url("http://mirror.example.org:8080/x.tgz"));
        for not in [
            "http://127.0.0.1:4000/x.tgz",
            "https://localhost/x",
            "file:///x",
            "https://a.b/c d",
            "https://a.example:x/",
        ] {
            assert!(!is_spdx_url(not), "{not}");
        }
    }

    #[test]
    fn license_expressions_are_told_from_free_text() {
        for ok in ["Apache-2.0", "GPL-2.0-only WITH Classpath-exception-2.0", "(MIT OR Apache-2.0) AND BSD-3-Clause"] {
            assert!(is_license_expression(ok), "{ok}");
        }
        assert!(is_license_expression("LicenseRef-vendor"));
        for free in
            ["", "Apache 2", "MIT OR", "(MIT", "GPL WITH", "see LICENSE file", "MIT AND AND BSD", "Not-A-License-9.9"]
        {
            assert!(!is_license_expression(free), "{free}");
        }
    }
}
