//! The CycloneDX 1.5 JSON document of one platform's image: the same inventory as the SPDX
//! document. Its serial number is derived from the image digest and the epoch, never random.

use serde_json::{json, Value};

use super::inventory::Inventory;
use super::spdx::is_license_expression;
use crate::digest::{Algorithm, Hash, Sha256Digest};
use crate::image::rfc3339;

const IMAGE_REF: &str = "image";

/// The document, serialized canonically.
pub(crate) fn document(inv: &Inventory) -> Vec<u8> {
    let i = &inv.image;
    let mut components = Vec::new();
    let mut image_needs = Vec::new();
    for r in &inv.recipes {
        let bom_ref = format!("recipe:{}", r.name);
        let mut c = json!({
            "type": "application",
            "bom-ref": bom_ref,
            "name": r.name,
            "version": r.version,
            "purl": r.purl(),
            "hashes": [hash(&r.hash)],
        });
        if let Some(l) = &r.license {
            c["licenses"] = licenses(l);
        }
        let mut references = Vec::new();
        if let Some(url) = &r.url {
            references.push(json!({ "type": "distribution", "url": url }));
        }
        if let Some(home) = &r.homepage {
            references.push(json!({ "type": "website", "url": home }));
        }
        if !references.is_empty() {
            c["externalReferences"] = Value::Array(references);
        }
        components.push(c);
        image_needs.push(bom_ref);
    }
    let mut dependencies = Vec::new();
    if let Some(base) = &inv.base {
        let base_ref = format!("base:{}", base.name);
        let debs: Vec<Value> = base
            .debs
            .iter()
            .map(|d| {
                let purl = base.deb_purl(d);
                json!({ "type": "library", "bom-ref": purl, "name": d.name, "version": d.version, "purl": purl })
            })
            .collect();
        let deb_refs: Vec<Value> = debs.iter().map(|d| d["bom-ref"].clone()).collect();
        components.push(json!({
            "type": "container",
            "bom-ref": base_ref,
            "name": base.name,
            "version": base.version,
            "purl": base.purl(),
            "hashes": [hash(&base.digest.to_hash())],
            "components": debs,
        }));
        dependencies.push(json!({ "ref": base_ref, "dependsOn": deb_refs }));
        image_needs.push(base_ref);
    }
    dependencies.insert(0, json!({ "ref": IMAGE_REF, "dependsOn": image_needs }));
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial_number(&i.digest, i.epoch),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(i.epoch),
            "tools": { "components": [{ "type": "application", "name": "imgbuild", "version": env!("CARGO_PKG_VERSION") }] },
            "component": {
                "type": "container",
                "bom-ref": IMAGE_REF,
                "name": i.name,
                "version": i.tag,
                "purl": inv.image_purl(),
                "hashes": [hash(&i.digest.to_hash())],
                "properties": [{ "name": "imgbuild:platform", "value": i.platform.to_string() }],
            },
        },
        "components": components,
        "dependencies": dependencies,
    });
    crate::image::canonical_json(&doc)
}

fn hash(h: &Hash) -> Value {
    let alg = match h.algorithm() {
        Algorithm::Sha256 => "SHA-256",
        Algorithm::Sha512 => "SHA-512",
    };
    json!({ "alg": alg, "content": h.hex() })
}

/// A declared license: an SPDX expression as such, anything else by name.
fn licenses(declared: &str) -> Value {
    if is_license_expression(declared) {
        json!([{ "expression": declared }])
    } else {
        json!([{ "license": { "name": declared } }])
    }
}

/// `urn:uuid:…`, a version-5-shaped UUID made from the image digest and the epoch.
fn serial_number(digest: &Sha256Digest, epoch: u64) -> String {
    let seed = Sha256Digest::of(format!("imgbuild cyclonedx {digest} {epoch}").as_bytes());
    let mut b: [u8; 16] = hex::decode(seed.hex()).expect("hex")[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("urn:uuid:{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}
