//! The SPDX 2.3 JSON document of one platform's image. Its `created` time is
//! `SOURCE_DATE_EPOCH` and its namespace is derived from the image digest and the epoch, so the
//! same image always has the same SBOM bytes.

use serde_json::{json, Value};

use super::inventory::Inventory;
use crate::digest::{Algorithm, Hash};
use crate::image::rfc3339;

const IMAGE_ID: &str = "SPDXRef-Image";
const BASE_ID: &str = "SPDXRef-Base";

/// The document, serialized canonically.
pub(crate) fn document(inv: &Inventory) -> Vec<u8> {
    let i = &inv.image;
    let mut packages = vec![image_package(inv)];
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    let mut extracted = Vec::new();
    for (n, r) in inv.recipes.iter().enumerate() {
        let id = format!("SPDXRef-Recipe-{n}-{}", id_part(&r.name));
        let license = match r.license.as_deref() {
            None => "NOASSERTION".to_string(),
            Some(l) if is_license_expression(l) => l.to_string(),
            Some(l) => {
                let license_id = format!("LicenseRef-{}", id_part(&r.name));
                extracted.push(json!({ "licenseId": license_id, "extractedText": l }));
                license_id
            }
        };
        let mut p = json!({
            "SPDXID": id,
            "name": r.name,
            "versionInfo": r.version,
            "packageFileName": r.file_name,
            "downloadLocation": r.url.as_deref().filter(|u| is_spdx_url(u)).unwrap_or("NOASSERTION"),
            "filesAnalyzed": false,
            "checksums": [checksum(&r.hash)],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license,
            "copyrightText": "NOASSERTION",
            "externalRefs": [purl_ref(&r.purl())],
        });
        if let Some(home) = r.homepage.as_deref().filter(|h| is_spdx_url(h)) {
            p["homepage"] = json!(home);
        }
        if let Some(url) = &r.url {
            // Kept whole where SPDX's URL grammar has no place for it (an address, a port).
            p["sourceInfo"] = json!(format!("downloaded from {url}"));
        }
        packages.push(p);
        relationships.push(relationship(IMAGE_ID, "CONTAINS", &id));
    }
    if let Some(base) = &inv.base {
        packages.push(json!({
            "SPDXID": BASE_ID,
            "name": base.name,
            "versionInfo": base.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [checksum(&base.digest.to_hash())],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [purl_ref(&base.purl())],
        }));
        relationships.push(relationship(IMAGE_ID, "CONTAINS", BASE_ID));
        for (n, deb) in base.debs.iter().enumerate() {
            let id = format!("SPDXRef-Deb-{n}-{}", id_part(&deb.name));
            packages.push(json!({
                "SPDXID": id,
                "name": deb.name,
                "versionInfo": deb.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "externalRefs": [purl_ref(&base.deb_purl(deb))],
            }));
            relationships.push(relationship(BASE_ID, "CONTAINS", &id));
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
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(extracted);
    }
    crate::image::canonical_json(&doc)
}

fn image_package(inv: &Inventory) -> Value {
    let i = &inv.image;
    json!({
        "SPDXID": IMAGE_ID,
        "name": i.name,
        "versionInfo": i.tag,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [checksum(&i.digest.to_hash())],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "externalRefs": [purl_ref(&inv.image_purl())],
    })
}

fn checksum(hash: &Hash) -> Value {
    let algorithm = match hash.algorithm() {
        Algorithm::Sha256 => "SHA256",
        Algorithm::Sha512 => "SHA512",
    };
    json!({ "algorithm": algorithm, "checksumValue": hash.hex() })
}

fn purl_ref(purl: &str) -> Value {
    json!({ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl })
}

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({ "spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to })
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

/// Whether `text` reads as an SPDX license expression (`A`, `A OR B`, `A WITH E`, `(A AND B)`):
/// declared licenses that do not are carried as `LicenseRef-` text instead.
pub(crate) fn is_license_expression(text: &str) -> bool {
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut at = 0;
    expression(&tokens, &mut at) && at == tokens.len()
}

fn expression(tokens: &[&str], at: &mut usize) -> bool {
    if !term(tokens, at) {
        return false;
    }
    while matches!(tokens.get(*at), Some(&"AND" | &"OR")) {
        *at += 1;
        if !term(tokens, at) {
            return false;
        }
    }
    true
}

fn term(tokens: &[&str], at: &mut usize) -> bool {
    if tokens.get(*at) == Some(&"(") {
        *at += 1;
        let inner = expression(tokens, at);
        let closed = tokens.get(*at) == Some(&")");
        *at += 1;
        return inner && closed;
    }
    if !tokens.get(*at).is_some_and(|t| is_license_id(t)) {
        return false;
    }
    *at += 1;
    if tokens.get(*at) == Some(&"WITH") {
        *at += 1;
        let ok = tokens.get(*at).is_some_and(|t| is_license_id(t));
        *at += 1;
        return ok;
    }
    true
}

fn is_license_id(token: &str) -> bool {
    let id = token.strip_suffix('+').unwrap_or(token);
    !id.is_empty()
        && !matches!(id, "AND" | "OR" | "WITH")
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
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
        for free in ["", "Apache 2", "MIT OR", "(MIT", "GPL WITH", "see LICENSE file", "MIT AND AND BSD"] {
            assert!(!is_license_expression(free), "{free}");
        }
    }
}
