//! The CycloneDX 1.5 JSON document of one platform's image: the same inventory as the SPDX
//! document. Its serial number is derived from the image digest and the epoch, never random.

use serde_json::{json, Value};

use super::inventory::{BasePackage, Inventory, RecipePackage};
use super::spdx::is_license_expression;
use crate::date::rfc3339;
use crate::digest::{Algorithm, Hash, Sha256Digest};

const IMAGE_REF: &str = "image";

/// The document, serialized canonically.
pub(crate) fn document(inv: &Inventory) -> Vec<u8> {
    let i = &inv.image;
    let mut components: Vec<Value> = inv.recipes.iter().map(recipe_component).collect();
    let mut image_needs: Vec<Value> = components.iter().map(|c| c["bom-ref"].clone()).collect();
    let mut dependencies = Vec::new();
    if let Some(base) = &inv.base {
        let (component, needs) = base_component(base);
        image_needs.push(component["bom-ref"].clone());
        dependencies.push(json!({ "ref": component["bom-ref"], "dependsOn": needs }));
        components.push(component);
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

/// A recipe: its pinned hash, declared license, URL and homepage.
fn recipe_component(r: &RecipePackage) -> Value {
    let mut c = json!({
        "type": "application",
        "bom-ref": format!("recipe:{}", r.name),
        "name": r.name,
        "version": r.version,
        "purl": r.purl(),
        "hashes": [hash(&r.hash)],
    });
    if let Some(l) = &r.license {
        c["licenses"] = licenses(l);
    }
    let references: Vec<Value> = [("distribution", &r.url), ("website", &r.homepage)]
        .into_iter()
        .filter_map(|(kind, url)| url.as_ref().map(|u| json!({ "type": kind, "url": u })))
        .collect();
    if !references.is_empty() {
        c["externalReferences"] = Value::Array(references);
    }
    c
}

/// The base image, holding its Debian packages; and their references, which it depends on.
fn base_component(base: &BasePackage) -> (Value, Vec<Value>) {
    let debs: Vec<Value> = base
        .debs
        .iter()
        .map(|d| {
            let purl = base.deb_purl(d);
            json!({ "type": "library", "bom-ref": purl, "name": d.name, "version": d.version, "purl": purl })
        })
        .collect();
    let needs = debs.iter().map(|d| d["bom-ref"].clone()).collect();
    let component = json!({
        "type": "container",
        "bom-ref": format!("base:{}", base.name),
        "name": base.name,
        "version": base.version,
        "purl": base.purl(),
        "hashes": [hash(&base.digest.to_hash())],
        "components": debs,
    });
    (component, needs)
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
